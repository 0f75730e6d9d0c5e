"""Masks that change while a run trains (``Regime.DURING_TRAINING``): the state the training loop carries, how an
update is applied, and how it is logged and checkpointed.

The training loop (:func:`bench_harness.running.training.train`) owns a :class:`MaskSchedule` when a pruner returned a
:class:`bench_harness.contract.pruner.MaskUpdater`. After each optimizer step for which the updater says so, it calls
:meth:`MaskSchedule.step`, which

1. asks the updater for new masks (with this step's dense gradients when the updater needs them: captured by the
   mask enforcer's gradient hooks before the masks zero them, at update steps only);
2. checks them (the same names, shapes, bool);
3. resets the optimizer state (every per-parameter state tensor shaped like the weight: SGD momentum, Adam's
   moments) of each entry whose mask changed, as the RigL reference resets the slots of grown connections (a dropped
   entry's state is reset too: it is zero and stays so while the entry is pruned, and starts from zero if regrown);
4. hands the masks to the enforcer, which zeroes the weights pruned now and keeps them at zero;
5. logs the update: step, global density, per-layer density, fraction of entries whose mask flipped.

:meth:`MaskSchedule.state` and :meth:`MaskSchedule.restore` carry the masks, the updater's ``state_dict`` and its
random generator through the training service's epoch checkpoints (plain tensors and numbers: never unpickled).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn

from bench_harness.contract.masking import MaskEnforcer
from bench_harness.contract.pruner import MaskUpdate, MaskUpdater
from bench_harness.errors import BenchError, RunFailure
from bench_harness.running.checkpoint import to_plain


def updater_generator(seed: int) -> torch.Generator:
    """The generator of a run's mask updates: seeded from the run's seed, apart from the pruner's ``ctx.generator``
    (which drew the initial masks) so that the two draw different streams."""
    digest = hashlib.sha256(f"mask-updates:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class MaskSchedule:
    """The masks of a during-training run, the updater that changes them, its generator and the update log."""

    def __init__(self, updater: MaskUpdater, masks: Mapping[str, torch.Tensor],
                 generator: torch.Generator | None = None) -> None:
        if not masks:
            raise ValueError("a during-training run needs masks for its prunable weights")
        self.updater = updater
        self.masks = {n: m.detach().clone().bool() for n, m in masks.items()}
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.log: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return type(self.updater).__qualname__

    def is_update_step(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        answer = self._call("is_update_step", step, total_steps, steps_per_epoch)
        value = answer.item() if getattr(answer, "shape", None) in ((), (1,)) and hasattr(answer, "item") else answer
        if isinstance(value, (bool, int)):  # a bool, an int, a NumPy or one-element tensor scalar of them
            return bool(value)
        raise RunFailure(f"mask updater {self.name}.is_update_step returned {type(answer).__name__} at step {step}: "
                         f"it must return a bool")

    def _call(self, method: str, *args):
        return call_updater(self.updater, method, *args)

    def step(self, step: int, total_steps: int, steps_per_epoch: int, model: nn.Module,
             optimizer: torch.optim.Optimizer, enforcer: MaskEnforcer, grad_scale: float = 1.0) -> None:
        """Apply the update of optimizer step ``step`` (see the module docstring); ``grad_scale``: the loss scale
        of mixed-precision training, divided out of the captured gradients."""
        params = dict(model.named_parameters())
        prunable = {n: params[n] for n in self.masks}
        grads = None
        if self.updater.needs_dense_grad:
            captured = enforcer.take_grads()
            grads = {n: (captured[n] / grad_scale if grad_scale != 1.0 else captured[n]) if n in captured
                     else torch.zeros_like(p) for n, p in prunable.items()}  # a weight the loss did not reach: 0
        update = MaskUpdate(step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch, model=model,
                            masks={n: m.clone() for n, m in self.masks.items()}, prunable=prunable, grads=grads,
                            optimizer=optimizer, generator=self.generator)
        finite_before = not _nonfinite(prunable)  # else training made them so: its loss check reports it
        new = self._call("update", update)
        if new is None:
            self._check_weights(prunable, step, finite_before)
            self.log.append(entry(step, self.masks, 0))
            return
        problems = mask_problems(new, self.masks)
        if problems:
            raise RunFailure(f"mask updater {self.name} returned invalid masks at step {step}: "
                             + "; ".join(problems))
        # copies: an updater that keeps the tensors it returned cannot change the run's masks behind its back
        new = {n: new[n].to(self.masks[n].device, copy=True) for n in self.masks}
        if not any(bool(m.any()) for m in new.values()):
            raise RunFailure(f"mask updater {self.name} pruned every prunable weight at step {step} (all layers "
                             f"collapsed): an update must keep some weights")
        changed = 0
        for n, old in self.masks.items():
            flipped = old != new[n]
            count = int(flipped.sum())
            if count:
                changed += count
                reset_optimizer_state(optimizer, prunable[n], flipped)
        self.masks = new
        enforcer.set_masks(new)
        self._check_weights(prunable, step, finite_before)
        self.log.append(entry(step, new, changed))

    def _check_weights(self, prunable: Mapping[str, torch.Tensor], step: int, finite_before: bool) -> None:
        """RunFailure naming the updater when its update left NaN or inf in prunable weights that were finite
        before it (a pruned NaN stays NaN under the mask: NaN x 0 = NaN), instead of a non-finite loss later."""
        bad = _nonfinite(prunable) if finite_before else []
        if bad:
            raise RunFailure(f"mask updater {self.name} left non-finite weights (NaN or inf) in {bad[:8]} at step "
                             f"{step}: an update may write only finite values (e.g. zero for grown weights)")

    def state(self) -> dict[str, Any]:
        """What the epoch checkpoint keeps (plain tensors and types). RunFailure naming the updater when its
        ``state_dict()`` is not a dict of tensors and plain types (checked on every run, checkpointed or not, so
        that an updater fails the same way on a laptop and on a cluster)."""
        updater_state = self._call("state_dict")
        if type(updater_state) is not dict:
            raise RunFailure(f"mask updater {self.name}.state_dict() returned {type(updater_state).__name__}: it must "
                             f"return a dict of tensors, numbers, strings, lists and dicts of them")
        try:
            updater_state = to_plain(updater_state, f"{self.name}.state_dict()")
        except TypeError as exc:
            raise RunFailure(f"mask updater {self.name}.state_dict() cannot be checkpointed: {exc}; return "
                             f"tensors, numbers, strings, lists and dicts of them (e.g. torch.as_tensor(array), "
                             f"int(x))") from None
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}, "updater": updater_state,
                "generator": self.generator.get_state(), "log": [dict(e) for e in self.log]}

    def state_problem(self, state: Any, max_step: int) -> str | None:
        """Why a checkpointed :meth:`state` cannot be restored (None: it can), checked before anything is changed:
        masks of the run's names, shapes and dtype that keep some weight; a CPU generator state; an updater state
        that is a dict; a log of well-formed entries at steps up to ``max_step`` whose last one describes the
        masks. A checkpoint is untrusted input (see :mod:`bench_harness.running.checkpoint`)."""
        if not isinstance(state, dict):
            return "damaged: no mask-update state"
        missing = sorted({"masks", "updater", "generator", "log"} - set(state))
        if missing:
            return f"damaged: its mask-update state lacks {missing}"
        problems = mask_problems(state["masks"], self.masks)
        if problems:
            return "damaged: its masks do not fit the run: " + "; ".join(problems[:3])
        masks = state["masks"]
        if not any(bool(m.any()) for m in masks.values()):
            return "damaged: its masks keep no weight"
        generator = state["generator"]
        try:
            torch.Generator(device=self.generator.device).set_state(generator)
        except Exception as exc:  # a wrong type, size or content: torch's own check
            return f"damaged: its mask-update generator state does not load ({type(exc).__name__})"
        if type(state["updater"]) is not dict:
            return f"damaged: its updater state is a {type(state['updater']).__name__}, not a dict"
        problem = log_problem(state["log"], masks, max_step)
        return f"damaged: its mask-update log {problem}" if problem else None

    def restore(self, state: Mapping[str, Any], max_step: int | None = None) -> str | None:
        """Back to a checkpointed :meth:`state`; returns why it cannot be (see :meth:`state_problem`; then nothing
        changed: an updater whose ``load_state_dict`` refuses the state is given back its own state) or None."""
        problem = self.state_problem(state, 2**62 if max_step is None else max_step)
        if problem:
            return problem
        own = self._call("state_dict")
        try:
            self.updater.load_state_dict(state["updater"])
        except Exception as exc:
            self._call("load_state_dict", own)  # back to where it was; a failure here fails the run
            return f"damaged: mask updater {self.name} refused its state ({type(exc).__name__}: {exc})"
        self.masks = {n: state["masks"][n].to(self.masks[n].device).bool() for n in self.masks}
        self.generator.set_state(state["generator"])
        self.log = [dict(e) for e in state["log"]]
        return None


def call_updater(updater: MaskUpdater, method: str, *args):
    """The updater's ``method``; an exception it raises becomes a RunFailure naming it (a timeout, Ctrl-C, a
    full disk and the harness's own errors pass unchanged)."""
    try:
        return getattr(updater, method)(*args)
    except (OSError, BenchError):
        raise
    except Exception as exc:
        if type(exc).__name__ == "RunTimeout":  # the run's time limit (bench_harness.running.runner)
            raise
        raise RunFailure(f"mask updater {type(updater).__qualname__}.{method}() raised {type(exc).__name__}: "
                         f"{exc}") from exc


def updater_info(updater: MaskUpdater) -> dict[str, Any]:
    """The updater's ``info()`` for the row's pruner_info: RunFailure naming it unless it is a dict JSON can store."""
    info = call_updater(updater, "info")
    if info is None:
        return {}
    try:
        if type(info) is not dict:
            raise TypeError(f"it returned {type(info).__name__}, not a dict")
        json.dumps(info)
    except (TypeError, ValueError) as exc:
        raise RunFailure(f"mask updater {type(updater).__qualname__}.info() is not JSON for the row's pruner_info "
                         f"({exc}): return a dict of numbers, strings, lists and dicts (e.g. float(x), x.tolist())"
                         ) from None
    return info


def entry(step: int, masks: Mapping[str, torch.Tensor], changed: int) -> dict[str, Any]:
    """One line of the update log."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {"step": int(step), "density": kept / total if total else 1.0,
            "layer_density": {n: float(m.float().mean()) if m.numel() else 1.0 for n, m in masks.items()},
            "changed": changed / total if total else 0.0}


def _nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [n for n, p in tensors.items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]


_LOG_KEYS = {"step", "density", "layer_density", "changed"}


def _fraction(x: Any) -> bool:
    return type(x) in (int, float) and 0.0 <= x <= 1.0


def log_problem(log: Any, masks: Mapping[str, torch.Tensor], max_step: int) -> str | None:
    """Why a checkpointed update log cannot be the log of ``masks`` (None: it can): a list of entries as
    :func:`entry` writes them, steps increasing in ``[1, max_step]``, the last one's densities those of ``masks``."""
    if type(log) is not list:
        return f"is a {type(log).__name__}, not a list"
    previous = 0
    for e in log:
        if type(e) is not dict or set(e) != _LOG_KEYS:
            return f"holds an entry that is not {{step, density, layer_density, changed}}: {str(e)[:80]}"
        layers = e["layer_density"]
        if not (type(e["step"]) is int and previous < e["step"] <= max_step and _fraction(e["density"])
                and _fraction(e["changed"]) and type(layers) is dict and set(layers) == set(masks)
                and all(_fraction(d) for d in layers.values())):
            return f"holds a malformed entry (or a step after the checkpoint's epoch): {str(e)[:80]}"
        previous = e["step"]
    if log:
        now = entry(0, masks, 0)
        last = log[-1]
        if abs(now["density"] - last["density"]) > 1e-9 or any(
                abs(now["layer_density"][n] - last["layer_density"][n]) > 1e-6 for n in masks):
            return "does not end with the densities of its masks"
    return None


def mask_problems(new: Any, old: Mapping[str, torch.Tensor]) -> list[str]:
    """Why ``new`` cannot replace ``old`` (empty: it can): the same names, shapes, and bool tensors."""
    if not isinstance(new, Mapping):
        return [f"masks must be a dict of name -> bool tensor, got {type(new).__name__}"]
    problems = []
    if set(new) != set(old):
        missing, extra = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        problems.append(f"names differ from the run's masks (missing {missing[:4]}, unknown {extra[:4]})")
        return problems
    for n, m in old.items():
        got = new[n]
        if (not isinstance(got, torch.Tensor) or got.dtype != torch.bool or tuple(got.shape) != tuple(m.shape)
                or got.is_meta):
            problems.append(f"mask {n} must be a bool tensor of shape {tuple(m.shape)}, got "
                            f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}"
                            + (" on the meta device (no data)" if getattr(got, "is_meta", False) else ""))
    return problems


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero the optimizer state of ``param`` at the entries ``where`` (every state tensor shaped like it)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(where.to(value.device), 0)
