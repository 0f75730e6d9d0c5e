"""Pretrained weights: a file, a torchvision weights enum or a timm tag, loaded into a run's model.

A model entry of a suite names its starting weights with ``weights:`` (config.weights says what each spelling
means; every pruner and the dense reference start from them, docs/transfer.md)::

    models:
      - {name: resnet20, weights: "file:checkpoints/resnet20_cifar10.pt"}   # a state dict (or {"state_dict": ...})
      - {name: "torchvision:resnet18", weights: "torchvision:IMAGENET1K_V1"} # or ResNet18_Weights.IMAGENET1K_V1,
                                                                             # DEFAULT
      - {name: "timm:resnet18.a1_in1k", weights: timm}                       # the tag's pretrained weights
      - {name: lenet5, weights: "pretrain:mnist", head: reinit}              # the harness's pretraining on MNIST

Without ``weights:``, a pruner that requires a pretrained model gets the harness's own pretraining on the run's
data (the suite's ``pretrain:`` recipe, a stage artifact shared by every run of the same model, data set and seed).

Weights are resolved offline, from the usual caches (torch hub: ``$TORCH_HOME/hub/checkpoints``; Hugging Face:
``$HF_HUB_CACHE``); a missing file is an error that names every place looked at and how to fill it. Loading
uses ``weights_only=True`` (or safetensors). The classifier follows the model entry's ``head:`` (see
:func:`load_state`); any other mismatch is an error. The SHA-256 of the weights file goes into the run's row
(``pretrained_sha256``) and, for ``file:`` weights, into its id.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench_harness.config.weights import FILE, TIMM, TORCHVISION, parse_weights, weights_file
from bench_harness.errors import BenchError
from bench_harness.running.training import classifier_prefix


class WeightsNotFound(BenchError, FileNotFoundError):
    """Pretrained weights are not on this machine; the message says where they were looked for."""


@dataclass
class LoadedWeights:
    source: str
    path: str
    sha256: str
    reinitialised: list[str]  # keys left at initialization (a classifier of another shape)


def _load_file(path: Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a weights file; ``data``: its bytes, when already read (hashed and loaded from one read)."""
    if data is None:
        data = path.read_bytes()
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:
            raise BenchError(f"{path}: cannot be read as a safetensors file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"{path}: cannot be read as a state dict with weights_only=True ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); save it with "
                         f"torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise BenchError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _torchvision_file(model_name: str, spec: str) -> tuple[Path, list[Path]]:
    import torchvision

    arch = model_name.split(":", 1)[1] if ":" in model_name else model_name
    try:
        enum_cls = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise BenchError(f"weights {spec!r}: torchvision has no weights for model {arch!r}") from None
    member = spec.split(":", 1)[1] if ":" in spec else "DEFAULT"
    member = member.rsplit(".", 1)[-1]
    try:
        weights = enum_cls[member] if member != "DEFAULT" else enum_cls.DEFAULT
    except KeyError:
        raise BenchError(f"weights {spec!r}: {enum_cls.__name__} has no {member!r}; known: "
                         f"{', '.join(w.name for w in enum_cls)}") from None
    name = os.path.basename(weights.url)
    place = Path(torch.hub.get_dir()) / "checkpoints" / name
    return place, [place]


def _timm_file(model_name: str) -> tuple[Path | None, list[Path], str]:
    import timm

    arch = model_name.split(":", 1)[1] if ":" in model_name else model_name
    if not timm.is_model(arch):
        raise BenchError(f"timm has no model {arch!r}; see timm.list_models(pretrained=True)")
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise BenchError(f"timm model {arch!r} has no pretrained weights; see timm.list_models(pretrained=True)")
    looked: list[Path] = []
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
            if not filename:
                continue
            found = try_to_load_from_cache(repo, filename)
            looked.append(Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "*"
                          / filename)
            if isinstance(found, str):
                return Path(found), looked, arch
    if getattr(cfg, "url", None):
        place = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        looked.append(place)
        if place.exists():
            return place, looked, arch
    return None, looked, arch


def resolve_weights(model_name: str, spec: str, base_dir: str | Path = ".") -> tuple[Path, str]:
    """(local file, canonical source) of a ``weights:`` entry; WeightsNotFound names where it looked."""
    spec = str(spec).strip()
    parsed = parse_weights(spec)
    if parsed.kind == FILE:
        path = weights_file(spec, base_dir)
        if not path.exists():
            raise WeightsNotFound(f"weights file {path} does not exist (weights: {spec!r}; a relative path is read "
                                  f"from the directory the suite was loaded in)")
        return path, f"file:{parsed.argument}"
    if parsed.kind == TORCHVISION:
        place, looked = _torchvision_file(model_name, spec)
        if not place.exists():
            raise WeightsNotFound(f"torchvision weights {spec!r} for {model_name!r} are not on this machine; looked "
                                  f"in {', '.join(map(str, looked))}. Download them once where there is internet "
                                  f"(torchvision.models.get_model(..., weights=...)) and copy the file there, or "
                                  f"set TORCH_HOME.")
        return place, (f"torchvision:{model_name.split(':', 1)[-1]}:"
                       f"{spec.split(':', 1)[1] if ':' in spec else 'DEFAULT'}")
    if parsed.kind == TIMM:
        place, looked, arch = _timm_file(model_name)
        if place is None:
            raise WeightsNotFound(f"timm weights of {arch!r} are not on this machine; looked in "
                                  f"{', '.join(map(str, looked)) or '(no download location known)'}. Run "
                                  f"timm.create_model({arch!r}, pretrained=True) once where there is internet and "
                                  f"copy the Hugging Face cache (or set HF_HUB_CACHE / TORCH_HOME).")
        return place, f"timm:{arch}"
    raise BenchError(f"weights {spec!r} are the harness's pretraining, not a file: the runner produces them")


def load_pretrained(model: nn.Module, model_name: str, spec: str, base_dir: str | Path = ".", head: str | None = None,
                    expected_sha256: str | None = None) -> LoadedWeights:
    """Load a ``weights:`` entry into ``model`` (in place). ``expected_sha256``: the file's digest when the suite
    was validated (part of the run id); a file changed since is an error, not a silent other experiment."""
    path, source = resolve_weights(model_name, spec, base_dir)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise BenchError(f"weights {source}: {path} is not a regular file")
    data = path.read_bytes()  # one read, hashed and loaded: the digest is of the weights the run loads
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise BenchError(f"weights file {path} changed since the suite was validated (SHA-256 {sha256[:12]}…, "
                         f"the run id was made for {expected_sha256[:12]}…): validate and run the suite again")
    reinitialised = load_state(model, _load_file(path, data), f"weights {source} ({path})", model_name, head)
    return LoadedWeights(source, str(path), sha256, reinitialised)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], what: str, model_name: str,
               head: str | None = None) -> list[str]:
    """Load pretrained ``state`` into ``model`` (in place) and return the classifier keys left at their
    initialization. The classifier (the model's last Linear layer) follows ``head``: ``auto`` (None) keeps it
    when its shape fits and leaves it at its initialization when the classes differ or the file has none (a
    self-supervised backbone); ``reinit`` always leaves it at its initialization; ``keep`` requires it to fit.
    Any other missing, unexpected or misfit key is an error naming it."""
    head = head or "auto"
    own = model.state_dict()
    classifier = classifier_prefix(model)

    def in_head(key: str) -> bool:
        return bool(classifier) and key.startswith(classifier + ".")

    state = dict(state)
    reinitialised, problems = [], []
    for key, value in list(state.items()):
        if key not in own:
            continue
        fits = tuple(own[key].shape) == tuple(value.shape)
        if in_head(key) and (head == "reinit" or (head == "auto" and not fits)):
            reinitialised.append(key)
            del state[key]
        elif not fits:
            problems.append(f"{key}: file {tuple(value.shape)}, model {tuple(own[key].shape)}")
    absent = [k for k in own if k not in state and k not in reinitialised and not k.endswith("num_batches_tracked")]
    if head != "keep":
        reinitialised += [k for k in absent if in_head(k)]
    missing = [k for k in absent if k not in reinitialised]
    unexpected = [k for k in state if k not in own]
    if problems or missing or unexpected:
        hint = (" (head: keep needs a classifier of the model's shape; head: auto re-initialises one that differs)"
                if head == "keep" and any(in_head(p.split(":")[0]) for p in problems + missing) else "")
        raise BenchError(f"{what} do not fit model {model_name!r}: "
                         + "; ".join(filter(None, [
                             f"shape mismatches {problems[:5]}" if problems else "",
                             f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}" if missing else "",
                             f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
                             if unexpected else ""])) + hint)
    model.load_state_dict(state, strict=False)
    return [k for k in own if k in set(reinitialised)]  # model order


def state_sha256(state: dict[str, Any]) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes, bytes), for weights the harness trained."""
    from bench_harness.running.trainer import _digest_tensor

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        _digest_tensor(digest, state[name])
    return digest.hexdigest()
