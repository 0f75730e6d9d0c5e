"""The training service: how the core trains, offered to pruners that own training.

A run's context carries a :class:`Trainer` (``ctx.trainer``) built from the suite's recipe (optimizer,
schedule, epochs, AMP, augmentation through the training loader), the run's device and its training loader.
``Trainer.fit`` trains in place with:

- ``params``: what to optimize (default every parameter with ``requires_grad``; a list of tensors, e.g. scores
  kept outside the model; or torch parameter groups, a group's ``lr`` being its base lr under the schedule);
- ``loss(model, x, y)``: instead of cross-entropy (e.g. a sparsity regularizer added to it);
- ``masks``: pruned weights get zero gradients and stay exactly zero;
- ``epochs`` / ``start_epoch``: train schedule epochs ``[start_epoch, epochs)`` (rewinding resumes the lr
  schedule at epoch k instead of restarting it);
- ``recipe``: a dict of recipe fields to override for this call (e.g. ``{"lr": 0.1, "weight_decay": 5e-4}``);
- ``after_step(step)``: called after every optimizer step (e.g. recompute a threshold);
- ``updater``: a :class:`bench_harness.contract.pruner.MaskUpdater` that changes ``masks`` while training (a
  during-training pruner's; see :mod:`bench_harness.running.mask_updates`), its random draws from
  ``updater_generator``; the result's ``masks`` are the masks training ended with and ``mask_updates`` the log;
- ``loader``: another training loader (e.g. a predictor's feature data set).

Progress is reported per epoch, a non-finite loss fails the run with a clear error, and when the run is
checkpointable (SLURM, ``execute_run(resume=True)``) every call checkpoints at each epoch end in the run's work
folder (see :mod:`bench_harness.running.checkpoint`: never unpickled, checksummed, bound to its run through
``checkpoint_owner``; a bad one is discarded with a warning and its fit redone). A preempted job re-runs
``prune()`` from the start: every ``fit`` call that had finished is then restored from its checkpoint instead
of trained again (the call is recognised by its position and a fingerprint of its starting state), and the call
that was interrupted resumes at its last epoch, with the same random state, so a deterministic pruner computes
exactly what an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench_harness.contract.pruner import MaskUpdater
from bench_harness.errors import RunFailure
from bench_harness.running import checkpoint
from bench_harness.running.mask_updates import MaskSchedule
from bench_harness.running.training import evaluate, train


@dataclass
class FitResult:
    """What one ``Trainer.fit`` call did."""

    epochs: int  # the schedule's end epoch
    start_epoch: int
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch trained
    steps: int = 0
    restored: bool = False  # finished in an earlier attempt; restored from its checkpoint
    resumed_from_epoch: int | None = None  # interrupted in an earlier attempt; resumed at this epoch
    seconds: float = 0.0  # wall seconds of training, earlier attempts included
    masks: dict[str, torch.Tensor] | None = None  # with an updater: the masks training ended with
    mask_updates: list[dict[str, Any]] = field(default_factory=list)  # with an updater: one entry per update


def _digest_tensor(digest, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(model: nn.Module, extra: list[torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
                settings: Mapping[str, Any]) -> str:
    """A hash of a fit call's starting point: model state, extra tensors, masks and settings."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        _digest_tensor(digest, t)
    for t in extra:
        _digest_tensor(digest, t)
    for name in sorted(masks or {}):
        digest.update(name.encode())
        _digest_tensor(digest, masks[name])
    return digest.hexdigest()


class Trainer:
    """The training service of one run (or of the Python API with ``train_data`` and ``recipe``)."""

    def __init__(self, loader: DataLoader | Iterable, recipe, device: torch.device,
                 checkpoint_dir: str | Path | None = None,
                 on_epoch: Callable[[str, int, int, float], None] | None = None,
                 test_loader: DataLoader | None = None, freeze_unoptimized: bool = False,
                 checkpoint_owner: str | None = None) -> None:
        self.loader = loader
        self.recipe = recipe
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        # Whose checkpoints these are (a run's: suite/run_id); a checkpoint of another owner is foreign.
        self.checkpoint_owner = checkpoint_owner or (self.checkpoint_dir.name if self.checkpoint_dir else "")
        self.on_epoch = on_epoch
        self.test_loader = test_loader
        # Mask-learning runs: parameters a fit does not optimize must come out bit-identical (checked).
        self.freeze_unoptimized = freeze_unoptimized
        self.calls = 0
        self.history: list[FitResult] = []

    @property
    def epochs(self) -> int:
        """The recipe's number of epochs."""
        return self.recipe.epochs

    def fit(self, model: nn.Module, *, masks: Mapping[str, torch.Tensor] | None = None, params=None,
            loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            epochs: int | None = None, start_epoch: int = 0, recipe: Mapping[str, Any] | None = None,
            after_step: Callable[[int], None] | None = None, loader: DataLoader | Iterable | None = None,
            key: str | None = None, phase: str | None = None, updater: MaskUpdater | None = None,
            updater_generator: torch.Generator | None = None) -> FitResult:
        """Train ``model`` in place; see the module docstring. ``key`` names the checkpoint of this call
        (default: its position among the run's calls); ``phase`` names it in progress reports."""
        run_recipe = dataclasses.replace(self.recipe, **dict(recipe)) if recipe else self.recipe
        if recipe:
            unknown = set(recipe) - {f.name for f in dataclasses.fields(self.recipe)}
            if unknown:
                raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        epochs = run_recipe.epochs if epochs is None else int(epochs)
        if not 0 <= start_epoch <= epochs:
            raise ValueError(f"start_epoch {start_epoch} must lie in [0, epochs={epochs}]")
        loader = loader if loader is not None else self.loader
        index = self.calls
        self.calls += 1
        key = key or f"fit-{index:03d}"
        phase = phase or key
        if updater is not None and not masks:
            raise ValueError("an updater changes masks: pass the initial masks (masks=...) with it")
        schedule = MaskSchedule(updater, masks, updater_generator) if updater is not None else None
        param_list = _tensors_of(params)
        model_ids = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
        extra = [t for t in param_list if id(t) not in model_ids]
        path = self.checkpoint_dir / f"{key}.pt" if self.checkpoint_dir is not None else None
        result = FitResult(epochs=epochs, start_epoch=start_epoch)
        generator = getattr(loader, "generator", None)
        optimizer = None
        saved = checkpoint.load(path, self.checkpoint_owner) if path is not None else None
        stamp = None
        if path is not None:
            settings = {"epochs": epochs, "start_epoch": start_epoch, "recipe": repr(run_recipe), "key": key,
                        **({"updater": type(updater).__qualname__} if updater is not None else {})}
            stamp = fingerprint(model, extra, masks, settings)
            if saved is not None and saved.get("fingerprint") != stamp:
                saved = None  # another computation: start over
        if saved is not None:
            # an untrusted file: every part is checked before anything is restored; a bad one is discarded (with a
            # CheckpointDiscarded warning) and the call trained from its start, never half-restored
            steps_per_epoch = max(len(loader), 1)
            problem = _checkpoint_problem(saved, model, extra, generator, start_epoch, epochs)
            if problem is None and schedule is not None:
                problem = schedule.state_problem(saved.get("during"), saved["epoch"] * steps_per_epoch)
                if problem is None and not saved["during"]["log"] and any(
                        not torch.equal(saved["during"]["masks"][n], m.cpu().bool()) for n, m in masks.items()):
                    problem = "damaged: its masks differ from the initial ones without a logged update"
            if problem is None and not saved["done"]:
                from bench_harness.running.training import make_optimizer

                optimizer = make_optimizer(model, run_recipe, params)
                problem = _optimizer_problem(optimizer, saved.get("optimizer"))
            if problem is None and schedule is not None:  # last: it asks the updater, given back its state on failure
                problem = schedule.restore(saved["during"], saved["epoch"] * steps_per_epoch)
            if problem is not None:
                checkpoint.discard(path, problem)
                saved, optimizer = None, None
        if saved is not None:
            _restore_tensors(model, extra, saved)
            checkpoint.restore_rng(saved["rng"], generator)
            result.losses = list(saved["losses"])
            result.seconds = saved.get("seconds", 0.0)
            if saved["done"]:
                result.restored = True
                result.steps = saved.get("steps", 0)
                if schedule is not None:
                    result.masks, result.mask_updates = schedule.masks, list(schedule.log)
                self.history.append(result)
                return result
            start_epoch = saved["epoch"]
            result.resumed_from_epoch = start_epoch

        last = {}

        def after_epoch(epoch, opt):
            last.update(epoch=epoch, optimizer=opt)

        def report(epoch, mean_loss):
            # the checkpoint is written here, once the epoch's loss is known (it holds every epoch's loss), and
            # before the progress callback, which may end the job
            result.losses.append(mean_loss)
            result.seconds = earlier_seconds + time.perf_counter() - t0
            if path is not None:
                self._save(path, stamp, model, extra, last["optimizer"], epoch, result, generator, done=False,
                           schedule=schedule)
            if self.on_epoch is not None:
                self.on_epoch(phase, epoch, epochs, mean_loss)

        counter = {"steps": 0}
        t0 = time.perf_counter()
        earlier_seconds = result.seconds

        def step_hook(step):
            counter["steps"] += 1
            if after_step is not None:
                after_step(step)

        frozen = {}
        if self.freeze_unoptimized:
            optimized = {id(t) for t in (param_list or [p for p in model.parameters() if p.requires_grad])}
            frozen = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in optimized}
        optimizer = train(model, loader, run_recipe, self.device, masks, epochs, on_epoch=report,
                          start_epoch=start_epoch, optimizer=optimizer, after_epoch=after_epoch, params=params,
                          loss_fn=loss, after_step=step_hook, schedule=schedule)
        result.steps = counter["steps"]
        result.seconds = earlier_seconds + time.perf_counter() - t0
        if frozen:
            params_now = dict(model.named_parameters())
            moved = [n for n, before in frozen.items() if not torch.equal(params_now[n].detach(), before)]
            if moved:
                raise RunFailure(f"mask learning changed weights it must leave frozen: {moved[:8]} (optimize only the "
                                 f"scores: pass params= to ctx.trainer.fit and set requires_grad=False on the weights)")
        if schedule is not None:
            result.masks, result.mask_updates = schedule.masks, list(schedule.log)
            if path is None:
                schedule.state()  # its updater's state must be checkpointable on every run (RunFailure if not)
        if path is not None:
            self._save(path, stamp, model, extra, optimizer, epochs, result, generator, done=True, schedule=schedule)
        self.history.append(result)
        return result

    def evaluate(self, model: nn.Module):
        """Top-1/top-5/loss on the run's test set (``None`` when the service has no test loader)."""
        if self.test_loader is None:
            return None
        return evaluate(model, self.test_loader, self.device)

    def _save(self, path, stamp, model, extra, optimizer, epoch, result, generator, done, schedule=None):
        payload = {"fingerprint": stamp, "done": done, "epoch": epoch, "losses": list(result.losses),
                   "steps": result.steps, "seconds": result.seconds,
                   "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "extra": [t.detach().cpu() for t in extra], "rng": checkpoint.rng_state(generator)}
        if not done:
            payload["optimizer"] = optimizer.state_dict()
        if schedule is not None:
            payload["during"] = schedule.state()
        checkpoint.save(path, payload, self.checkpoint_owner)

    def clear_checkpoints(self) -> None:
        """Remove the fit checkpoints (the run has saved its own state past them); never through a link."""
        if self.checkpoint_dir is not None:
            checkpoint.clear_files(self.checkpoint_dir, "fit-", ".pt")


def _checkpoint_problem(saved: dict[str, Any], model: nn.Module, extra: list[torch.Tensor],
                        generator: torch.Generator | None, start_epoch: int, epochs: int) -> str | None:
    """Why a fit checkpoint of the right fingerprint cannot be restored (None: it can; the optimizer and the
    mask-update state are checked apart): the types and ranges of its fields, the model's keys and shapes, the
    extra tensors' shapes, RNG states that load. A well-formed forgery of wrong numbers passes (no signature)."""
    done, epoch, losses = saved.get("done"), saved.get("epoch"), saved.get("losses")
    if type(done) is not bool:
        return "damaged: its done flag is not a bool"
    if type(epoch) is not int or not start_epoch <= epoch <= epochs or (done and epoch != epochs):
        return f"damaged: epoch {epoch!r} outside the call's epochs [{start_epoch}, {epochs}]"
    if (type(losses) is not list or len(losses) != epoch - start_epoch
            or not all(type(x) in (int, float) for x in losses)):
        return "damaged: its losses are not one number per epoch trained"
    if type(saved.get("steps", 0)) is not int or type(saved.get("seconds", 0.0)) not in (int, float):
        return "damaged: steps or seconds of the wrong type"
    state, shapes = saved.get("model"), {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not (type(state) is dict and set(state) == set(shapes)
            and all(isinstance(t, torch.Tensor) and tuple(t.shape) == shapes[k] for k, t in state.items())):
        return "damaged: its model state does not fit the model"
    tensors = saved.get("extra")
    if not (type(tensors) is list and len(tensors) == len(extra) and all(
            isinstance(t, torch.Tensor) and t.shape == e.shape for t, e in zip(tensors, extra))):
        return "damaged: its extra tensors do not fit the ones the call optimizes"
    return checkpoint.rng_problem(saved.get("rng"), generator)


def _optimizer_problem(optimizer: torch.optim.Optimizer, state: Any) -> str | None:
    """Load a checkpoint's optimizer state into ``optimizer`` (a fresh one); why it cannot be used, or None. Its
    hyperparameters (momentum, weight decay, the base lr the schedule scales...) must be the recipe's, its
    per-parameter state tensors scalars or shaped like their parameter."""
    hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    if type(state) is not dict:
        return "damaged: no optimizer state"
    try:
        optimizer.load_state_dict(state)
    except Exception as exc:
        return f"damaged: its optimizer state does not load ({type(exc).__name__})"
    if hyper != [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]:
        return "damaged: its optimizer hyperparameters are not the recipe's"
    for group in optimizer.param_groups:
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if not (value is None or type(value) in (int, float) or (isinstance(value, torch.Tensor) and (
                        value.dim() == 0 or value.shape == p.shape))):
                    return "damaged: its optimizer state does not fit the parameters"
    return None


def _tensors_of(params) -> list[torch.Tensor]:
    if params is None:
        return []
    out = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"])
        else:
            out.append(item)
    return out


@torch.no_grad()
def _restore_tensors(model: nn.Module, extra: list[torch.Tensor], saved: dict[str, Any]) -> None:
    model.load_state_dict(saved["model"])
    if len(saved["extra"]) != len(extra):
        raise RuntimeError("a fit checkpoint holds a different number of extra tensors than the call optimizes")
    for t, value in zip(extra, saved["extra"]):
        t.copy_(value.to(t.device))
