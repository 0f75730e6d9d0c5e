"""Execute one run: data, model, (pretraining), pruning, training, evaluation, one result row."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Subset

from bench_harness import paths
from bench_harness.config.suite import RunSpec, check_version
from bench_harness.contract import ablations, masking
from bench_harness.contract.artifacts import ArtifactStore
from bench_harness.contract.datasets import (
    concrete_spec,
    first_per_class,
    head,
    load_split,
    make_loader,
    tensor_batches,
    train_loader,
)
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruner import Regime, training_plan
from bench_harness.contract.pruning import (
    call_pruner,
    changed_weights,
    check_final_masks,
    make_context,
    mask_summary,
    weights_fingerprint,
)
from bench_harness.contract.services import Services
from bench_harness.contract.storage import model_storage_bits
from bench_harness.diskspace import disk_full_error, is_disk_full
from bench_harness.errors import BenchError, DiskFullError, RunFailure
from bench_harness.interrupts import escape_from_plugin, watch_sigint
from bench_harness.results import store as results
from bench_harness.running import checkpoint
from bench_harness.running.device_data import device_loaders
from bench_harness.running.mask_updates import updater_generator, updater_info
from bench_harness.running.metrics import flops_per_example, peak_memory_bytes
from bench_harness.running.plan import (
    PRETRAINED,
    artifact_plan,
    artifact_store,
    pretrain_key,
    pretrain_source,
    validated_params,
    with_own_params,
)
from bench_harness.running.provenance import provenance, resolve_device
from bench_harness.running.step_options import step_options
from bench_harness.running.trainer import Trainer
from bench_harness.running.training import evaluate, train
from bench_harness.running.weights import load_pretrained, load_state, state_sha256


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RunData:
    """Loaders of one run: training, test, and scoring batches."""

    def __init__(self, run: RunSpec, spec, device: torch.device, scoring_spec=None) -> None:
        """``scoring_spec``: the data set scored on when it is not the run's (``scoring.dataset``)."""
        recipe, scoring = run.recipe, run.scoring
        kw = dict(root=run.data_root, download=run.download, **run.dataset.params)
        train_set = head(load_split(spec, "train", recipe.augment, **kw), recipe.train_subset)
        self.train = train_loader(train_set, recipe.batch_size, run.seed, None, recipe.num_workers)
        test_set = head(load_split(spec, "test", False, **kw), recipe.test_subset)
        if scoring_spec is None:
            score_set = head(load_split(spec, "train", scoring.augment, **kw), recipe.train_subset)
        else:
            score_set = load_split(scoring_spec, "train", scoring.augment, root=run.data_root, download=run.download)
        self.scoring_source = score_set
        scored = scoring_spec or spec
        if scoring.examples_per_class is not None:
            score_set = first_per_class(score_set, scoring.examples_per_class, scored.num_classes)
        else:
            n = scoring.examples if scoring.examples is not None else 10 * scored.num_classes
            seed = run.seed if scoring.seed is None else scoring.seed
            order = (torch.randperm(len(score_set), generator=torch.Generator().manual_seed(seed)).tolist()
                     if scoring.shuffle else list(range(len(score_set))))
            score_set = Subset(score_set, order[:n])
        self.test = make_loader(test_set, recipe.eval_batch_size, False, run.seed, recipe.num_workers)
        self.scoring = make_loader(score_set, scoring.batch_size, False, run.seed)
        resident = device_loaders(train_set, test_set, recipe, run.seed, device)  # recipe.data_on_device
        self.on_device = resident is not None
        if resident is not None:
            self.train, self.test = resident
        self.input_shape = (spec.in_channels, spec.image_size, spec.image_size)


def _data_and_model(run: RunSpec, registry: Registry, device: torch.device):
    """The run's data loaders and its freshly initialised model (seeded: the same run gives the same weights)."""
    dspec = concrete_spec(registry.get("dataset", run.dataset.name), run.data_root, run.dataset.params)
    data = RunData(run, dspec, device, scoring_spec(run, registry, dspec))
    seed_everything(run.seed)
    model = build_model(registry.get("model", run.model.name), run.model.name, dspec.num_classes,
                        dspec.in_channels, dspec.image_size, run.model.params).to(device)
    return dspec, data, model, artifact_store(run)


def scoring_spec(run: RunSpec, registry: Registry, dspec):
    """The spec of the data set a run scores on when it is not the run's own (``scoring.dataset``; None
    otherwise). It must give the run's inputs (channels, image size) and labels the model can take."""
    name = run.scoring.dataset
    if name is None or name == run.dataset.name:
        return None
    sspec = concrete_spec(registry.get("dataset", name), run.data_root, {})
    if (sspec.in_channels, sspec.image_size) != (dspec.in_channels, dspec.image_size):
        raise BenchError(f"scoring.dataset {name!r} has {sspec.in_channels}x{sspec.image_size}x{sspec.image_size} "
                         f"images and the run's data set {run.dataset.name!r} {dspec.in_channels}x{dspec.image_size}x"
                         f"{dspec.image_size}: score on a data set of the same image shape")
    if sspec.num_classes > dspec.num_classes:
        raise BenchError(f"scoring.dataset {name!r} has {sspec.num_classes} classes and the model's classifier "
                         f"{dspec.num_classes} (those of {run.dataset.name!r}): its labels cannot be scored; score "
                         f"on a data set with at most {dspec.num_classes} classes")
    return sspec


def pretrain_only(run: RunSpec, registry: Registry | None = None) -> str:
    """Compute (or find) a run's pretrained weights in the artifact store; the SLURM executor runs this as a
    stage job that every dependent run waits for. Returns the artifact folder."""
    device = resolve_device(run.device)
    _, data, model, store = _data_and_model(run, registry or get_registry(), device)
    _harness_pretrained(run, model, data, device, store, None, registry or get_registry())
    return str(store.folder(PRETRAINED, pretrain_key(run)))


def _harness_pretrained(run: RunSpec, model, data: RunData, device, store: ArtifactStore, on_epoch,
                        registry: Registry):
    """The state dict of the harness's pretraining (the suite's ``pretrain:`` recipe), from the artifact store or
    trained now: the run's model on the run's data, or for ``weights: pretrain:<dataset>`` a model built for the
    source data set and trained on it (seeded by the run's seed, so every pruner of a seed shares one backbone)."""
    source = pretrain_source(run)
    sspec = None if source is None else concrete_spec(registry.get("dataset", source), run.data_root, {})
    if sspec is not None and (sspec.in_channels, sspec.image_size, sspec.image_size) != data.input_shape:
        raise BenchError(f"pretrain:{source} has {sspec.in_channels}x{sspec.image_size}x{sspec.image_size} images and "
                         f"the run's data set {run.dataset.name!r} {'x'.join(map(str, data.input_shape))}: a "
                         f"backbone pretrained on one does not fit the other's model")

    def compute():
        # the random streams the rest of the run draws from (augmentation, dropout) must not depend on whether the
        # artifact was computed in this run or found stored: pretraining draws from a fork of them
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return pretrained_state()

    def pretrained_state():
        if source is None:
            train(model, data.train, run.pretrain, device, on_epoch=on_epoch)
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}
        recipe = run.pretrain
        train_set = head(load_split(sspec, "train", recipe.augment, root=run.data_root, download=run.download),
                         recipe.train_subset)
        seed_everything(run.seed)
        backbone = build_model(registry.get("model", run.model.name), run.model.name, sspec.num_classes,
                               sspec.in_channels, sspec.image_size, run.model.params).to(device)
        train(backbone, train_loader(train_set, recipe.batch_size, run.seed, None, recipe.num_workers), recipe,
              device, on_epoch=on_epoch)
        return {k: v.detach().cpu() for k, v in backbone.state_dict().items()}

    return store.get(PRETRAINED, pretrain_key(run), compute)


def _load_pretrained(run: RunSpec, model, data: RunData, device, store: ArtifactStore, row, on_epoch,
                     registry: Registry) -> None:
    """Give the model its starting weights (the model entry's weights:, else the harness's pretraining on the
    run's data) before pruning; the classifier follows the model entry's ``head:``."""
    t0 = time.perf_counter()
    progress = (lambda e, loss: on_epoch and on_epoch("pretrain", e, run.pretrain.epochs, loss))
    reinitialised: list[str] = []
    if run.model.weights and not run.harness_pretrains:
        loaded = load_pretrained(model, run.model.name, run.model.weights, run.base_dir, run.model.head,
                                 run.weights_sha256)
        row.update(pretrained_source=loaded.source, pretrained_sha256=loaded.sha256)
        reinitialised = loaded.reinitialised
    elif run.model.weights:  # pretrain:<dataset>: a transfer from the harness's pretraining on another data set
        state = _harness_pretrained(run, model, data, device, store, progress, registry)
        reinitialised = load_state(model, state, f"pretrained weights {run.model.weights}", run.model.name,
                                   run.model.head)
        row.update(pretrained_source=run.weights_canonical or run.model.weights, pretrained_sha256=state_sha256(state))
    elif run.pretrain is not None:
        state = _harness_pretrained(run, model, data, device, store, progress, registry)
        model.load_state_dict(state)
        row.update(pretrained_source="pretrain", pretrained_sha256=state_sha256(state))
    else:
        raise BenchError(f"pruner {run.pruner.name!r} prunes a pretrained model: add `weights: ...` to the model "
                         f"entry (file:<path>, torchvision:<WEIGHTS>, timm) or `pretrain: {{epochs: N}}` to the suite")
    if reinitialised:
        why = ("head: reinit" if run.model.head == "reinit" else
               "head: auto, and the weights' classifier does not fit the run's classes or there is none")
        warnings.warn(f"pretrained weights {row['pretrained_source']}: classifier {reinitialised} left at its "
                      f"initialization ({why})", stacklevel=2)
    row["pretrain_seconds"] = time.perf_counter() - t0
    row["top1_pretrained"] = evaluate(model, data.test, device).top1


_NUMBER = (int, float)
_TEXT = (str, type(None))
# The row columns the runner computes before training, saved in pruned.pt and taken back on resume, with the
# types a resumed value must have (a checkpoint is untrusted: nothing else of its row is ever used).
BEFORE_TRAINING_TYPES: dict[str, tuple[type, ...]] = {
    "pretrain_seconds": _NUMBER, "storage_bits": (int, type(None)), "top1_pretrained": _NUMBER,
    "prune_seconds": _NUMBER, "pruner_info": _TEXT, "top1_before_training": _NUMBER,
    "top5_before_training": _NUMBER, "loss_before_training": _NUMBER, "pretrained_source": _TEXT,
    "pretrained_sha256": _TEXT, "artifacts": _TEXT, "train_from_epoch": (int,), "granularity": _TEXT}
BEFORE_TRAINING_KEYS = tuple(BEFORE_TRAINING_TYPES)


def _progress(on_epoch, prefix: str):
    if on_epoch is None:
        return None
    return lambda phase, epoch, total, loss: on_epoch(f"{prefix}{phase}", epoch, total, loss)


def _context(run, registry, model, data, dspec, device, store, on_epoch, resume, regime):
    work = checkpoint.work_dir(run.results_root, run.suite, run.run_id)
    trainer = Trainer(data.train, run.recipe, device, checkpoint_dir=work if resume else None,
                      on_epoch=_progress(on_epoch, "prune:"), test_loader=data.test,
                      freeze_unoptimized=regime == Regime.MASK_LEARNING,
                      checkpoint_owner=checkpoint.run_owner(run.suite, run.run_id))
    return make_context(
        model, seed=run.seed, device=device, batches=tensor_batches(data.scoring, None),
        exclude_first=run.prunable.exclude_first, exclude_last=run.prunable.exclude_last,
        prunable=run.prunable.include, exclude=run.prunable.exclude,
        num_classes=dspec.num_classes, input_shape=data.input_shape, artifacts=store, dataset=data.scoring_source,
        trainer=trainer, train_loader=data.train, pretrained=run.starts_pretrained, run=run.info(),
        run_dir=paths.run_artifacts_dir(run.results_root, run.suite, run.run_id),
        services=Services(call_pruner, registry, data_root=run.data_root, download=run.download),
    )


def produce_stages(run: RunSpec, registry: Registry | None = None) -> list[str]:
    """Produce (or find) the stage artifacts of a run's pruner (the stages of its artifact plan); the SLURM
    executor runs this as a stage job before the arrays that need it. Returns the artifact folders."""
    registry = registry or get_registry()
    pruner_cls = registry.get("pruner", run.pruner.name)
    device = resolve_device(run.device)
    dspec, data, model, store = _data_and_model(run, registry, device)
    if run.starts_pretrained:
        _load_pretrained(run, model, data, device, store, {}, None, registry)
    ctx = _context(run, registry, model, data, dspec, device, store, None, False, pruner_cls.regime)
    folders = []
    for planned in artifact_plan(run, registry, store):
        if planned.stage is not None:
            ctx.stage(planned.stage)
            folders.append(str(store.folder(planned.name, planned.config)))
    return folders


def _prune(run, registry, pruner_cls, model, data, dspec, device, store, row, on_epoch, resume):
    """Starting weights (the model entry's, or pretraining when the pruner needs a trained model), prune,
    ablation and masks, evaluation before training. Returns (masks, end epoch, start epoch, the pruner's mask
    updater or None)."""
    row["pretrain_seconds"] = 0.0
    if run.starts_pretrained:
        _load_pretrained(run, model, data, device, store, row, on_epoch, registry)
    ctx = _context(run, registry, model, data, dspec, device, store, on_epoch, resume, pruner_cls.regime)
    run_files = ctx.run_dir
    run_files.mkdir(parents=True, exist_ok=True)
    params = validated_params(run)
    row["granularity"] = pruner_cls.granularity_of(params).value
    weights_before = None if pruner_cls.changes_weights else weights_fingerprint(model)
    t0 = time.perf_counter()
    result = call_pruner(pruner_cls, params, model, run.sparsity, ctx, run.ablation)
    row["prune_seconds"] = time.perf_counter() - t0
    check_weights_untouched(pruner_cls, model, weights_before)
    masks = ablations.apply_after_pruning(run.ablation, model, result.masks, ctx.generator, run.seed)
    masking.apply_masks(model, masks)
    check_not_all_pruned(pruner_cls, model, masks, row)
    row["pruner_info"] = results.to_json(result.info) if result.info else None
    row["artifacts"] = results.to_json({n: r.as_row() for n, r in store.used.items()}) if store.used else None
    if run_files.is_dir() and not any(run_files.iterdir()):
        run_files.rmdir()
    before = evaluate(model, data.test, device)
    row.update(top1_before_training=before.top1, top5_before_training=before.top5, loss_before_training=before.loss)
    end, start = training_plan(result, pruner_cls.regime, run.recipe.epochs)
    row["train_from_epoch"] = start
    row["storage_bits"] = result.storage_bits
    return masks, end, start, result.updater


def check_weights_untouched(pruner_cls, model: torch.nn.Module, before: dict[str, str] | None) -> None:
    """Raise RunFailure when prune() changed weights although the pruner does not declare ``changes_weights``
    (``before``: the fingerprint taken before pruning; None when the pruner declares it)."""
    if before is None:
        return
    changed = changed_weights(before, weights_fingerprint(model))
    if changed:
        raise RunFailure(f"pruner {pruner_cls.name!r} changed weights {', '.join(changed[:8])}"
                         f"{' …' if len(changed) > 8 else ''} without declaring it: set changes_weights = True on "
                         f"the class (or leave the weights alone and return masks)")


def check_not_all_pruned(pruner_cls, model: torch.nn.Module, masks: dict, row: dict[str, Any]) -> None:
    """Raise RunFailure (with layer_collapse and collapsed_layers in the row) when every prunable weight is zero
    once the masks are applied: nothing is left to train or evaluate, whatever the pruner's sparsity kind."""
    if pruner_cls.ignores_sparsity or not masks:
        return
    summary = masking.weight_summary(model, masks)
    if summary["kept"] == 0:
        row.update(layer_collapse=True, collapsed_layers=results.to_json(summary["collapsed_layers"]),
                   achieved_sparsity=1.0)
        raise RunFailure(f"pruner {pruner_cls.name!r} removed every prunable weight ({summary['total']} of "
                         f"{summary['total']}): all layers collapsed; a pruner must keep some weights")


def execute_run(run: RunSpec, registry: Registry | None = None,
                on_epoch: Callable[[str, int, int, float], None] | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Execute a run and write its shard; never raises for a failure of the run itself: whatever the pruner raises
    (SystemExit, a KeyboardInterrupt without Ctrl-C, RunTimeout anywhere) becomes a failure row. Raises
    KeyboardInterrupt for a real Ctrl-C (SIGINT) and DiskFullError when the results folder is full.

    ``on_epoch(phase, epoch, total_epochs, loss)`` reports training progress. With ``resume``, training state is
    checkpointed after pruning and at every epoch end, and a checkpoint left by an interrupted attempt is
    resumed (the SLURM executor uses this).
    """
    registry = registry or get_registry()
    try:  # parameters validated from the registry's cache where a SLURM job was submitted: by the pruner now
        run = with_own_params(run)
    except BenchError as exc:  # the plugin installed here is not the submitting machine's: this run fails alone
        return write_failure_row(run, str(exc), registry)
    row = _start_row(run)
    device = torch.device("cpu")
    registry.call_lifecycle("bench_run_started", run=run)
    with watch_sigint(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with process_state_kept(row):
            try:
                with time_limit(run.timeout_min):
                    device = _execute(run, registry, row, on_epoch, resume, device)
            except RunTimeout as exc:  # delivered outside the run's body (while recording another failure)
                if row.get("status") is None:
                    _record_failure(row, exc)
                device = row.pop("_device", device)
    seen = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.append(text)
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return _write_row(run, row, device, resume, registry, seen)


def _start_row(run: RunSpec) -> dict[str, Any]:
    return {**identity_columns(run), "started_at": _now()}


def identity_columns(run: RunSpec) -> dict[str, Any]:
    """The row columns that say which run a row is (its file name comes from ``run_id``): derived from the
    RunSpec only, never from a checkpoint or plugin code."""
    return {
        "run_id": run.run_id, "suite": run.suite, "pruner": run.pruner.name,
        "pruner_params": results.to_json(run.identity().get("pruner_params", {})), "ablation": run.ablation,
        "model": run.model.name, "model_params": results.to_json(run.model.params), "dataset": run.dataset.name,
        "seed": run.seed, "target_sparsity": run.sparsity, "config": results.to_json(run.identity()),
    }


def _write_row(run: RunSpec, row: dict[str, Any], device: torch.device, resume: bool, registry: Registry,
               seen_warnings: list[str]) -> dict[str, Any]:
    row["warnings"] = results.to_json(seen_warnings) if seen_warnings else None
    row["peak_memory_bytes"] = peak_memory_bytes(device)
    row.update(provenance(device))
    row["finished_at"] = _now()
    row.update(identity_columns(run))  # whatever changed the row meanwhile, it is stored as this run's
    try:
        results.write_shard(row, run.results_root, run.suite)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(_suite_folder(run), f"the result of run {run.run_id} could not be written") from exc
        raise
    if resume and row.get("status") == "ok":
        checkpoint.clear(run.results_root, run.suite, run.run_id)
    registry.call_lifecycle("bench_run_finished", run=run, row=row)
    return row


def write_failure_row(run: RunSpec, error: str, registry: Registry | None = None) -> dict[str, Any]:
    """Write a failure row for a run that could not record its own (its worker process died)."""
    row = _start_row(run)
    row.update(status="failed", error=error, traceback=None)
    return _write_row(run, row, torch.device("cpu"), False, registry or get_registry(), [])


class RunTimeout(Exception):
    """The run exceeded the suite's ``timeout_min``."""


class PluginSideEffect(UserWarning):
    """Plugin code changed the process's state (umask, working directory, stdout/stderr); the runner restored it."""


@dataclass
class _ProcessState:
    """What plugin code running in this process may change and the runner puts back after each run."""

    umask: int
    cwd_fd: int | None
    stdio_fds: dict[int, int]  # fd 1/2 -> a duplicate of it
    stdio_objects: tuple
    writer: Callable

    @classmethod
    def save(cls) -> _ProcessState:
        umask = os.umask(0o022)
        os.umask(umask)
        return cls(umask, _dup_or_none(".", directory=True), {fd: d for fd in (1, 2)
                   if (d := _dup_or_none(fd)) is not None}, (sys.stdout, sys.stderr), results.write_shard)

    def restore(self) -> list[str]:
        """Put everything back; returns what had been changed (for a warning)."""
        changed = []
        umask = os.umask(self.umask)
        if umask != self.umask:
            changed.append(f"the umask ({umask:04o}, restored to {self.umask:04o})")
        changed += self._restore_cwd() + self._restore_stdio()
        if results.write_shard is not self.writer:
            results.write_shard = self.writer
            changed.append("the harness's result writer bench_harness.results.store.write_shard (restored)")
        return changed

    def _restore_cwd(self) -> list[str]:
        if self.cwd_fd is None:
            return []
        try:
            before = os.fstat(self.cwd_fd)
            now = os.stat(".")
            moved = (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
        except OSError:  # the working directory was removed
            moved = True
        try:
            if moved:
                os.fchdir(self.cwd_fd)
        finally:
            os.close(self.cwd_fd)
        return ["the working directory (restored)"] if moved else []

    def _restore_stdio(self) -> list[str]:
        changed = []
        for fd, saved in self.stdio_fds.items():
            if not _same_file(fd, saved):
                changed.append(f"file descriptor {fd} ({'stdout' if fd == 1 else 'stderr'}; restored)")
                os.dup2(saved, fd)
            os.close(saved)
        if (sys.stdout, sys.stderr) != self.stdio_objects:
            sys.stdout, sys.stderr = self.stdio_objects
            changed.append("sys.stdout/sys.stderr (restored)")
        return changed


def _dup_or_none(what: int | str, directory: bool = False) -> int | None:
    """A new descriptor of the file descriptor or folder ``what``; None when it is closed or unreadable."""
    try:
        return os.open(what, os.O_RDONLY | os.O_DIRECTORY) if directory else os.dup(what)
    except OSError:
        return None


def _same_file(fd: int, saved: int) -> bool:
    try:
        a, b = os.fstat(fd), os.fstat(saved)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def process_state_kept(row: dict[str, Any]):
    """Run plugin code, then restore what it changed in the process: the umask, the working directory, file
    descriptors 1 and 2 (and sys.stdout/sys.stderr), and the harness's result writer. Each change is a
    PluginSideEffect warning (in the row's warnings); replacing the result writer also fails the run: plugin code
    that rewires how results are stored has no trustworthy result."""
    state = _ProcessState.save()
    try:
        yield
    finally:
        changed = state.restore()
        if changed:
            warnings.warn(f"plugin code changed {'; '.join(changed)}", PluginSideEffect, stacklevel=3)
        if any("result writer" in c for c in changed):
            row.update(status="failed", traceback=None,
                       error="plugin code replaced the harness's result writer (bench_harness.results.store."
                             "write_shard): the writer was restored and this run counts as failed")


@contextlib.contextmanager
def time_limit(minutes: float | None):
    """Raise RunTimeout in this (main) thread after ``minutes`` of wall time; no limit when None or when not in
    the main thread (signals are delivered there only). Never raises once the block has been left."""
    if not minutes or threading.current_thread() is not threading.main_thread():
        yield
        return
    active = {"on": True}

    def expire(signum, frame):
        if not active["on"]:
            return
        raise RunTimeout(f"timed out after {minutes:g} min (the suite's timeout_min): the pruner or training did "
                         f"not finish; raise timeout_min or look for a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, minutes * 60.0)
    try:
        yield
    finally:
        active["on"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class PreparedRun:
    """A run pruned and ready to train (or resumed from its pruned checkpoint)."""

    run: RunSpec
    registry: Registry
    pruner_cls: Any
    device: torch.device
    data: RunData
    model: torch.nn.Module
    masks: dict
    end: int  # train schedule epochs [start, end)
    start: int
    row: dict[str, Any]
    resume: bool
    updater: Any = None  # a during-training pruner's MaskUpdater: it changes the masks while the run trains


def _prepare(run: RunSpec, registry: Registry, row: dict[str, Any], on_epoch, resume: bool) -> PreparedRun:
    """Data, model, pretrained weights, pruning (or the pruned checkpoint of an earlier attempt)."""
    entry = registry.entry("pruner", run.pruner.name)
    pruner_cls = entry.obj
    check_version(run.pruner.name, run.pruner_version, pruner_cls)  # the version its id names
    row.update(pruner_version=str(pruner_cls.version), regime=pruner_cls.regime.value,
               pruner_distribution=f"{entry.distribution} {entry.version}".strip(),
               sparsity_kind=pruner_cls.sparsity_kind.value)
    device = resolve_device(run.device)
    row["_device"] = device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dspec, data, model, store = _data_and_model(run, registry, device)
    row["num_classes"] = dspec.num_classes
    row.update(step_options(run.recipe, device).columns(), data_on_device=data.on_device)
    pruned_path = checkpoint.pruned_path(run.results_root, run.suite, run.run_id)
    owner = checkpoint.run_owner(run.suite, run.run_id)
    resumed = checkpoint.load(pruned_path, owner) if resume else None
    if resumed is not None:
        problem = resume_problem(resumed, model)
        if problem:
            checkpoint.discard(pruned_path, problem)
            resumed = None
    if resumed is None:
        masks, end, start, updater = _prune(run, registry, pruner_cls, model, data, dspec, device, store, row,
                                            on_epoch, resume)
        # a during-training run keeps no pruned.pt: a resumed attempt prunes again (its initial masks are cheap and
        # deterministic) to rebuild its updater, then its training resumes from the epoch checkpoint
        if resume and end > start and updater is None:
            checkpoint.save(pruned_path, {
                "run_id": run.run_id, "end": end, "start": start,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "masks": {n: m.cpu() for n, m in masks.items()},
                "row": {k: row[k] for k in BEFORE_TRAINING_KEYS if k in row},
                "rng": checkpoint.rng_state(data.train.generator)}, owner)
            Trainer(data.train, run.recipe, device, checkpoint.work_dir(
                run.results_root, run.suite, run.run_id)).clear_checkpoints()
    else:
        model.load_state_dict(resumed["model"])
        masks = {n: m.to(device) for n, m in resumed["masks"].items()}
        row.update({k: v for k, v in resumed["row"].items() if k in BEFORE_TRAINING_TYPES})
        end, start = resumed["end"], resumed["start"]
        checkpoint.restore_rng(resumed["rng"], data.train.generator)
        row["resumed_from_epoch"] = start
        updater = None
    return PreparedRun(run, registry, pruner_cls, device, data, model, masks, end, start, row, resume, updater)


def resume_problem(resumed: dict[str, Any], model: torch.nn.Module) -> str | None:
    """Why a loaded pruned.pt payload cannot be resumed from (None: it can): its row values must have the types
    of BEFORE_TRAINING_TYPES (other keys are ignored, never used), its plan must be epochs
    ``0 <= start <= end``, its model state must have the model's keys and shapes and its masks name the model's
    parameters with their shapes. A well-formed forgery of wrong numbers passes: the checksum is no signature."""
    row, end, start = resumed.get("row"), resumed.get("end"), resumed.get("start")
    if not isinstance(row, dict):
        return "damaged: its row is not a mapping"
    wrong = [k for k, types in BEFORE_TRAINING_TYPES.items() if k in row and not isinstance(row[k], types)]
    if wrong:
        return f"damaged: row values of the wrong type: {', '.join(sorted(wrong))}"
    if not (type(end) is int and type(start) is int and 0 <= start <= end):
        return f"damaged: training plan start={start!r} end={end!r}"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state, masks, rng = resumed.get("model"), resumed.get("masks"), resumed.get("rng")
    if not _tensor_shapes_fit(state, expected, exact=True):
        return "damaged: its model state does not fit the run's model"
    parameters = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    if not _tensor_shapes_fit(masks, parameters, exact=False):
        return "damaged: its masks do not fit the run's model"
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        return "damaged: no RNG state"
    return None


def _tensor_shapes_fit(tensors: Any, shapes: dict[str, tuple], exact: bool) -> bool:
    """``tensors`` maps names of ``shapes`` (all of them when ``exact``) to tensors of those shapes."""
    if not isinstance(tensors, dict) or (exact and set(tensors) != set(shapes)):
        return False
    return all(isinstance(t, torch.Tensor) and shapes.get(n) == tuple(t.shape) for n, t in tensors.items())


def _train(p: PreparedRun, on_epoch) -> None:
    row = p.row
    if p.end > p.start:
        trainer = Trainer(p.data.train, p.run.recipe, p.device,
                          checkpoint_dir=checkpoint.work_dir(p.run.results_root, p.run.suite, p.run.run_id)
                          if p.resume else None, on_epoch=on_epoch,
                          checkpoint_owner=checkpoint.run_owner(p.run.suite, p.run.run_id))
        fit = trainer.fit(p.model, masks=p.masks, epochs=p.end, start_epoch=p.start, key="train", phase="train",
                          updater=p.updater, updater_generator=None if p.updater is None else
                          updater_generator(p.run.seed))
        if fit.resumed_from_epoch is not None:
            row["resumed_from_epoch"] = fit.resumed_from_epoch
        row["train_seconds"] = fit.seconds
        if p.updater is not None:
            _end_mask_updates(p, fit)
    else:
        row["train_seconds"] = 0.0


def _end_mask_updates(p: PreparedRun, fit) -> None:
    """A during-training run's masks are the ones its training ended with: checked against the target as a
    one-shot pruner's are, and its update log goes into the row's pruner_info."""
    p.masks = fit.masks
    params = dict(p.model.named_parameters())
    check_final_masks(p.pruner_cls, p.masks, {n: params[n] for n in p.masks}, p.run.sparsity)
    info = json.loads(p.row["pruner_info"]) if p.row.get("pruner_info") else {}
    info.update(updater_info(p.updater))  # RunFailure naming the updater for a bad info()
    info["mask_updates"] = fit.mask_updates
    p.row["pruner_info"] = results.to_json(info)


def _finish(p: PreparedRun) -> None:
    """Evaluate, account sparsity and cost, metrics: the row becomes status ok."""
    run, row, model, masks, data, device = p.run, p.row, p.model, p.masks, p.data, p.device
    row["epochs_trained"] = p.end - p.start
    after = evaluate(model, data.test, device)
    row.update(top1=after.top1, top5=after.top5, loss=after.loss)
    summary = mask_summary(model, masks)  # sparsity and collapse counted on the weights, not the masks
    row["sparsity_bin"] = masking.sparsity_bin(run.sparsity, summary["achieved_sparsity"],
                                               p.pruner_cls.sparsity_kind.value)
    row.update(
        achieved_sparsity=summary["achieved_sparsity"], achieved_sparsity_all=summary["achieved_sparsity_all"],
        layer_density=json.dumps(summary["layer_density"]),  # model order, not sorted
        layer_collapse=bool(summary["collapsed_layers"]),
        collapsed_layers=results.to_json(summary["collapsed_layers"]),
        params_total=summary["params_total"], params_nonzero=summary["params_nonzero"],
        params_prunable=sum(m.numel() for m in masks.values()),
    )
    row["model_bits"] = model_storage_bits(row.pop("storage_bits", None), summary["params_total"],
                                           summary["params_nonzero"], row["params_prunable"],
                                           dense=p.pruner_cls.ignores_sparsity)
    row["compression_ratio"] = 32.0 * summary["params_total"] / max(row["model_bits"], 1)
    row["flops_dense"], row["flops_effective"] = flops_per_example(model, data.input_shape, masks, device)
    for name, metric in p.registry.entries["metric"].items():
        row[f"metric_{name}"] = float(metric.obj.compute(model, masks, data.test, device))
    row["status"] = "ok"


def _suite_folder(run: RunSpec):
    return paths.suite_dir(run.results_root, run.suite)


def _fail(row: dict[str, Any], exc: BaseException, run: RunSpec | None = None) -> None:
    """Record a run's failure in its row. Re-raises a real Ctrl-C; a full disk becomes DiskFullError (the sweep
    stops: later runs could not be stored either); SystemExit and a KeyboardInterrupt that no SIGINT caused are
    the plugin's and become failures like any exception."""
    if isinstance(exc, DiskFullError):
        raise exc
    if is_disk_full(exc) and run is not None:
        raise disk_full_error(_suite_folder(run), f"run {run.run_id} failed writing: {exc}") from exc
    escaped = escape_from_plugin(exc)
    if escaped is None and isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    _record_failure(row, escaped or exc)


def _record_failure(row: dict[str, Any], exc: BaseException) -> None:
    row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    device = row.get("_device")
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


def _execute(run: RunSpec, registry: Registry, row: dict[str, Any], on_epoch, resume: bool,
             device: torch.device) -> torch.device:
    """The body of a run: fills ``row``; a failure becomes status=failed. Returns the device used."""
    try:
        prepared = _prepare(run, registry, row, on_epoch, resume)
        _train(prepared, on_epoch)
        _finish(prepared)
    except BaseException as exc:  # a failed run is a result row, never the end of the sweep
        _fail(row, exc, run)
    return row.pop("_device", device)


def execute_packed(runs: list[RunSpec], registry: Registry | None = None,
                   on_epoch: Callable[[str, int, int, float], None] | None = None) -> list[dict[str, Any]]:
    """Execute runs that share a model architecture, data set and recipe with their training packed into one
    batched computation (see bench_harness.running.packing); each run still prunes alone and gets its own row. Runs
    that cannot be packed (another schedule span, a failure while pruning) are trained or recorded alone."""
    registry = registry or get_registry()
    with watch_sigint():
        return _execute_packed(runs, registry, on_epoch)


def _execute_packed(runs, registry, on_epoch):
    from bench_harness.running.packing import packable_key, train_packed

    rows, prepared = [], []
    for run in runs:
        row = _start_row(run)
        registry.call_lifecycle("bench_run_started", run=run)
        with process_state_kept(row):
            try:
                with time_limit(run.timeout_min):
                    try:
                        prepared.append(_prepare(run, registry, row, None, False))
                    except BaseException as exc:
                        _fail(row, exc, run)
            except RunTimeout as exc:  # delivered while recording another failure, or as pruning ended
                if row.get("status") is None:
                    _record_failure(row, exc)
        rows.append(row)
    groups: dict[Any, list[PreparedRun]] = {}
    for p in prepared:
        groups.setdefault(packable_key(p), []).append(p)
    for key, group in groups.items():
        try:
            if key is None or len(group) == 1:
                for p in group:
                    _train(p, on_epoch)
            else:
                train_packed(group, on_epoch)
        except BaseException as exc:
            for p in group:
                _fail(p.row, exc, p.run)
    for p in prepared:
        if p.row.get("status") == "failed":
            continue
        try:
            _finish(p)
        except BaseException as exc:
            _fail(p.row, exc, p.run)
    for run, row in zip(runs, rows):
        _write_row(run, row, row.pop("_device", torch.device("cpu")), False, registry, [])
    return rows
