"""`bench check-plugin`: a conformance kit for pruners.

It runs a pruner on small models (an MLP, a conv net with BatchNorm, a residual net) with synthetic data, the
core's real training service (one epoch of SGD over two batches) and a real artifact store in a temporary
folder, and checks that:

- the pruner runs with scoring data only if it declares ``requires.data`` (a pruner that reads data it did not
  declare fails "runs without error");
- the masks cover exactly the prunable parameters, are boolean with the right shapes;
- the sparsity fits the declared kind: ``exact`` within the tolerance, ``target`` within it (else reported),
  ``learned`` in [0, 1);
- prune() returns masks (a dict or a PruneResult, not None), and ends by returning: ``sys.exit()`` and a
  ``KeyboardInterrupt`` that no Ctrl-C caused fail "runs without error" (``bench check-plugin`` runs the kit in a
  child process, so a pruner that kills its process with ``os._exit`` or a crash fails too);
- some prunable weight is kept (not every layer collapsed), whatever the sparsity kind;
- the weights are finite, and left alone unless the pruner declares ``changes_weights``;
- the masks are identical when run twice with the same seed (the second run with the global RNG elsewhere and
  the stage artifacts of the first already stored: they must be reused, not produced again);
- a pruner that trains through ``ctx.trainer`` and is interrupted in the middle of its training computes the
  same masks when run again with the same checkpoints (as a preempted SLURM job does).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench_harness.contract import masking
from bench_harness.contract.artifacts import ArtifactStore
from bench_harness.contract.pruner import Pruner, SparsityKind
from bench_harness.contract.pruning import as_result, make_context, nonfinite_parameters
from bench_harness.interrupts import escape_from_plugin, watch_sigint
from bench_harness.processes import describe_exit, die_with_parent
from bench_harness.running.trainer import Trainer


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                                 nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)) + self.shortcut(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": _MLP, "conv_bn": _ConvBN, "residual": _Residual}
INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 4


@dataclass
class Check:
    model: str
    sparsity: float
    name: str
    passed: bool
    detail: str = ""


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, *INPUT_SHAPE, generator=g), torch.randint(0, NUM_CLASSES, (16,), generator=g))
               for _ in range(2)]
    return lambda: iter(batches)


RECIPE = dict(epochs=2, batch_size=16, lr=0.01, momentum=0.9, weight_decay=0.0, schedule="constant",
              augment=False)


class _Interrupt(Exception):
    pass


def _prune_once(cls: type[Pruner], params: Any, model_name: str, sparsity: float, workdir: Path, seed: int = 0,
                global_rng_seed: int = 0, checkpoints: Path | None = None, interrupt_at: int | None = None):
    from bench_harness.api import make_recipe

    torch.manual_seed(seed)
    model = MODELS[model_name]()
    # The global RNG differs between the two determinism runs: randomness must come from ctx.generator.
    torch.manual_seed(10_007 + global_rng_seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = _data(seed)
    epochs_seen = {"n": 0}

    def on_epoch(phase, epoch, total, loss):
        epochs_seen["n"] += 1
        if interrupt_at is not None and epochs_seen["n"] == interrupt_at:
            raise _Interrupt()

    trainer = Trainer(list(batches()), make_recipe(RECIPE), torch.device("cpu"), checkpoint_dir=checkpoints,
                      on_epoch=on_epoch)
    store = ArtifactStore(workdir / "artifacts", producer="check-plugin")
    run_dir = workdir / f"run-{global_rng_seed}"
    # a pruner gets scoring data only if it declares requires.data (reading undeclared data fails the kit)
    ctx = make_context(model, seed=seed, batches=batches if cls.requires.data else None, num_classes=NUM_CLASSES,
                       input_shape=INPUT_SHAPE,
                       trainer=trainer, train_loader=list(batches()), artifacts=store, run_dir=run_dir)
    out = cls(params).prune(model, sparsity, ctx)
    ctx.epochs_seen = epochs_seen["n"]
    return model, before, ctx, out


def check_pruner_in_child(name: str, params: dict | None = None) -> list[Check]:
    """The kit for the registered pruner ``name`` run in a child process (spawn), so that a pruner that ends its
    process (``os._exit``, a crash, a signal) fails the kit instead of ending the caller; a real Ctrl-C ends the
    child and is re-raised here."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_check_child, args=(name, params or {}, sender, os.getpid()), daemon=True)
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = None
    except BaseException:
        child.kill()
        raise
    finally:
        child.join()
    if outcome is None:
        return [Check("-", float("nan"), "runs without error", False,
                      f"the pruner ended the checking process ({describe_exit(child.exitcode)}): a pruner must "
                      f"return masks or raise an exception, never exit or crash its process")]
    if isinstance(outcome, str):
        raise RuntimeError(f"the conformance kit failed in its child process: {outcome}")
    return outcome


def _check_child(name: str, params: dict, sender, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    from bench_harness.contract.plugins import get_registry

    try:
        cls = get_registry().get("pruner", name)
        outcome: Any = check_pruner(cls, cls.make_params(params))
    except Exception as exc:  # the kit itself, not the pruner (whose exceptions are checks)
        outcome = f"{type(exc).__name__}: {exc}"
    sender.send(outcome)
    sender.close()


def check_pruner(cls: type[Pruner], params: Any = None, sparsities: tuple[float, ...] = (0.5, 0.9),
                 models: tuple[str, ...] = tuple(MODELS)) -> list[Check]:
    params = params if params is not None else cls.Params()
    checks: list[Check] = []
    with watch_sigint():
        for model_name in models:
            for sparsity in sparsities:
                with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
                    _check_case(cls, params, model_name, sparsity, Path(tmp), checks)
    return checks


def _failure_text(exc: BaseException) -> str:
    """An exception of plugin code as a check's detail; re-raises a real Ctrl-C."""
    escaped = escape_from_plugin(exc)
    if escaped is None and isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    return f"{type(escaped or exc).__name__}: {escaped or exc}"


def _check_case(cls: type[Pruner], params: Any, model_name: str, sparsity: float, workdir: Path,
                checks: list[Check]) -> None:
    add = lambda name, ok, detail="": checks.append(Check(model_name, sparsity, name, bool(ok), detail))  # noqa: E731
    try:
        model, before, ctx, out = _prune_once(cls, params, model_name, sparsity, workdir)
        result = as_result(cls, out)
    except BaseException as exc:  # SystemExit, a plugin's KeyboardInterrupt, a None result: a failed check
        add("runs without error", False, _failure_text(exc))
        return
    add("runs without error", True)
    masks = result.masks
    expected = set(ctx.prunable)
    add("masks cover exactly the prunable parameters", set(masks) == expected,
        f"missing {sorted(expected - set(masks))}, extra {sorted(set(masks) - expected)}")
    bad_dtype = [n for n, m in masks.items() if not isinstance(m, torch.Tensor) or m.dtype != torch.bool]
    add("masks are boolean tensors", not bad_dtype, f"not bool: {bad_dtype}")
    bad_shape = [n for n, m in masks.items() if n in ctx.prunable and
                 tuple(getattr(m, "shape", ())) != tuple(ctx.prunable[n].shape)]
    add("masks have the weights' shapes", not bad_shape, f"wrong shape: {bad_shape}")
    valid = not bad_dtype and not bad_shape and set(masks) == expected
    if not cls.ignores_sparsity and valid:
        achieved = 1.0 - masking.global_density(masks)
        detail = f"achieved {achieved:.5f}, target {sparsity}, tolerance {cls.sparsity_tolerance}"
        if cls.sparsity_kind == SparsityKind.LEARNED:
            add("learned sparsity in [0, 1)", 0.0 <= achieved < 1.0, detail)
        else:
            add(f"reaches the target sparsity ({cls.sparsity_kind.value})",
                masking.sparsity_on_target(masks, sparsity, cls.sparsity_tolerance), detail)
    if valid and not cls.ignores_sparsity:
        add("keeps some weights (not every layer collapsed)", any(bool(m.any()) for m in masks.values()),
            "every prunable weight removed: the network computes a constant")
    if valid:
        bad = nonfinite_parameters(model, masks)
        add("weights are finite", not bad, f"NaN/inf in {bad}")
    if not (cls.changes_weights or result.weights_changed):
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
        add("weights left alone", not changed, f"changed without declaring it: {changed}")
    elif result.weights_changed and not cls.changes_weights:
        add("declares that it changes weights", False, "returned weights_changed=True but the class "
            "does not set changes_weights = True")
    try:
        _, _, ctx2, again = _prune_once(cls, params, model_name, sparsity, workdir, global_rng_seed=1)
        again = as_result(cls, again).masks
        same = set(again) == set(masks) and all(torch.equal(again[n], masks[n]) for n in masks)
        add("deterministic under a fixed seed", same, "two runs with seed 0 gave different masks (draw random "
            "numbers from ctx.generator, not the global RNG)")
        if ctx.artifacts.used:
            produced_again = [n for n, r in ctx2.artifacts.used.items() if r.produced]
            add("stage artifacts produced once, then reused", not produced_again,
                f"produced again although stored: {produced_again} (the artifact config must not change "
                f"between runs that can share it)")
    except BaseException as exc:
        add("deterministic under a fixed seed", False, f"second run failed: {_failure_text(exc)}")
    if ctx.epochs_seen >= 2 and valid:
        _check_resume(cls, params, model_name, sparsity, workdir, masks, ctx.epochs_seen, add)


def _check_resume(cls, params, model_name, sparsity, workdir, masks, epochs_seen, add) -> None:
    """Interrupt the pruner's training half-way, run again on the same checkpoints: the same masks."""
    from bench_harness.contract.pruner import PruneResult

    checkpoints = workdir / "checkpoints"
    name = "resumes after an interruption with the same masks"
    try:
        _prune_once(cls, params, model_name, sparsity, workdir, checkpoints=checkpoints,
                    interrupt_at=epochs_seen // 2 + 1)
        add(name, False, "the interruption did not happen")
        return
    except _Interrupt:
        pass
    except BaseException as exc:
        add(name, False, f"first attempt failed: {_failure_text(exc)}")
        return
    try:
        _, _, _, out = _prune_once(cls, params, model_name, sparsity, workdir, checkpoints=checkpoints)
    except BaseException as exc:
        add(name, False, f"resumed attempt failed: {_failure_text(exc)}")
        return
    again = out.masks if isinstance(out, PruneResult) else dict(out)
    same = set(again) == set(masks) and all(torch.equal(again[n], masks[n]) for n in masks)
    add(name, same, "a resumed prune gave other masks than an uninterrupted one: train through ctx.trainer and keep "
        "every random draw on ctx.generator")
