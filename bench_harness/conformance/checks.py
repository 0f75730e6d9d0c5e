"""The checks of one case of the kit: a pruner run on one of the kit's models at one sparsity, then again.

A case checks that:

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
  the stage artifacts already stored: they must be reused, not produced again);
- a pruner that trains through ``ctx.trainer`` (stage artifacts stored, as in a run after its stage jobs) and is
  interrupted in the middle of its training computes the same masks when run again with the same checkpoints
  (as a preempted SLURM job does);
- a during-training pruner (``Regime.DURING_TRAINING``) is trained with its mask updater for the kit's recipe
  after ``prune()``, as a run trains it; the checks above apply to the masks its training ends with (the weights
  are compared before that training), and the resume check interrupts that training half-way.

A check that does not apply, or cannot run because an earlier one failed, is recorded as not run with the reason.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench_harness.conformance.models import INPUT_SHAPE, MODELS, NUM_CLASSES, data
from bench_harness.conformance.standins import Pretraining, recipe
from bench_harness.contract import masking
from bench_harness.contract.artifacts import ArtifactStore
from bench_harness.contract.pruner import Pruner, PruneResult, SparsityKind
from bench_harness.contract.pruning import as_result, make_context, nonfinite_parameters
from bench_harness.interrupts import escape_from_plugin
from bench_harness.running.mask_updates import updater_generator
from bench_harness.running.trainer import Trainer


@dataclass
class Check:
    """A check that ran."""

    model: str
    sparsity: float
    name: str
    passed: bool
    detail: str = ""


@dataclass
class NotRun:
    """A check that did not run, and why."""

    model: str
    sparsity: float
    name: str
    reason: str


@dataclass
class Step:
    """Progress: the kit starts ``text`` in a case."""

    model: str
    sparsity: float
    text: str


@dataclass
class CaseDone:
    model: str
    sparsity: float
    seconds: float


RUNS = "runs without error"
COVER = "masks cover exactly the prunable parameters"
BOOLEAN = "masks are boolean tensors"
SHAPES = "masks have the weights' shapes"
KEEPS = "keeps some weights (not every layer collapsed)"
FINITE = "weights are finite"
LEFT_ALONE = "weights left alone"
DECLARES = "declares that it changes weights"
DETERMINISTIC = "deterministic under a fixed seed"
STAGES = "stage artifacts produced once, then reused"
RESUMES = "resumes after an interruption with the same masks"


def sparsity_check(cls: type[Pruner]) -> str:
    if cls.sparsity_kind == SparsityKind.LEARNED:
        return "learned sparsity in [0, 1)"
    return f"reaches the target sparsity ({cls.sparsity_kind.value})"


def check_names(cls: type[Pruner]) -> list[str]:
    """The checks of a case of ``cls``, in the order they run (each one runs or is recorded as not run)."""
    return [RUNS, COVER, BOOLEAN, SHAPES, sparsity_check(cls), KEEPS, FINITE, LEFT_ALONE, DETERMINISTIC, STAGES,
            RESUMES]


class Case:
    """The records of one case, handed to ``emit`` as they are made."""

    def __init__(self, model: str, sparsity: float, emit: Callable[[Any], None]) -> None:
        self.model, self.sparsity, self.emit = model, sparsity, emit
        self.recorded: set[str] = set()

    def add(self, name: str, ok: Any, detail: str = "") -> None:
        self.recorded.add(name)
        self.emit(Check(self.model, self.sparsity, name, bool(ok), "" if ok else detail))

    def skip(self, name: str, reason: str) -> None:
        self.recorded.add(name)
        self.emit(NotRun(self.model, self.sparsity, name, reason))

    def skip_rest(self, names: list[str], reason: str) -> None:
        for name in names:
            if name not in self.recorded:
                self.skip(name, reason)

    def step(self, text: str) -> None:
        self.emit(Step(self.model, self.sparsity, text))


@dataclass
class Setting:
    """What every case of one kit run shares."""

    cls: type[Pruner]
    params: Any
    artifacts: Path  # the stage artifact store's folder
    pretraining: Pretraining | None  # None: the pruner prunes untrained models


class _Interrupt(Exception):
    pass


def prune_once(setting: Setting, model_name: str, sparsity: float, workdir: Path, seed: int = 0,
               global_rng_seed: int = 0, checkpoints: Path | None = None, interrupt_at: int | None = None):
    """Build the case's model (pretrained if the pruner needs it), prune it; (model, weights before, ctx, output)."""
    cls = setting.cls
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    if setting.pretraining is not None:
        model.load_state_dict(setting.pretraining.weights(model_name, seed))
    # The global RNG differs between the two determinism runs: randomness must come from ctx.generator.
    torch.manual_seed(10_007 + global_rng_seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = data(seed)
    epochs_seen = {"n": 0}

    def on_epoch(phase, epoch, total, loss):
        epochs_seen["n"] += 1
        if interrupt_at is not None and epochs_seen["n"] == interrupt_at:
            raise _Interrupt()

    trainer = Trainer(list(batches()), recipe(), torch.device("cpu"), checkpoint_dir=checkpoints, on_epoch=on_epoch)
    store = ArtifactStore(setting.artifacts, producer="check-plugin")
    run_dir = workdir / f"run-{global_rng_seed}"
    # a pruner gets scoring data only if it declares requires.data (reading undeclared data fails the kit)
    ctx = make_context(model, seed=seed, batches=batches if cls.requires.data else None, num_classes=NUM_CLASSES,
                       input_shape=INPUT_SHAPE, trainer=trainer, train_loader=list(batches()), artifacts=store,
                       run_dir=run_dir, pretrained=setting.pretraining is not None)
    try:
        out = cls(setting.params).prune(model, sparsity, ctx)
        if isinstance(out, PruneResult) and out.updater is not None:
            out = _train_with_updater(model, out, ctx, trainer, seed)
    finally:
        ctx.epochs_seen = epochs_seen["n"]
    return model, before, ctx, out


def _train_with_updater(model, result: PruneResult, ctx, trainer: Trainer, seed: int) -> PruneResult:
    """A during-training pruner's training, as a run does it: the masks it ends with replace the initial ones (the
    weights after pruning are kept in ``ctx.weights_after_prune`` for the weights-left-alone check)."""
    ctx.weights_after_prune = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit = trainer.fit(model, masks=result.masks, updater=result.updater, updater_generator=updater_generator(seed),
                      key="during-training", phase="train")
    return dataclasses.replace(result, masks=fit.masks, info={**result.info, "mask_updates": fit.mask_updates})


def failure_text(exc: BaseException) -> str:
    """An exception of plugin code as a check's detail; re-raises a real Ctrl-C."""
    escaped = escape_from_plugin(exc)
    if escaped is None and isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    return f"{type(escaped or exc).__name__}: {escaped or exc}"


def check_case(setting: Setting, model_name: str, sparsity: float, workdir: Path, case: Case) -> None:
    """Every check of one case, recorded in ``case`` (each of ``check_names`` ran or is recorded as not run)."""
    cls = setting.cls
    names = check_names(cls)
    t0 = time.perf_counter()
    case.step("prune")
    try:
        model, before, ctx, out = prune_once(setting, model_name, sparsity, workdir)
        result = as_result(cls, out)
    except BaseException as exc:  # SystemExit, a plugin's KeyboardInterrupt, a None result: a failed check
        case.add(RUNS, False, failure_text(exc))
        case.skip_rest(names, "the pruner failed (runs without error)")
        case.emit(CaseDone(model_name, sparsity, time.perf_counter() - t0))
        return
    case.add(RUNS, True)
    masks = result.masks
    valid = _check_masks(cls, ctx, masks, sparsity, case)
    if valid:
        bad = nonfinite_parameters(model, masks)
        case.add(FINITE, not bad, f"NaN/inf in {bad}")
    else:
        case.skip_rest([sparsity_check(cls), KEEPS, FINITE], "the masks are malformed")
    _check_weights_left_alone(cls, result, model, before, case, ctx)
    case.step("prune again (same seed, global RNG elsewhere, stage artifacts stored)")
    ctx2 = _check_determinism(setting, model_name, sparsity, workdir, masks, ctx, case)
    if ctx2 is None:
        case.skip(RESUMES, "the second run failed")
    elif not valid:
        case.skip(RESUMES, "the masks are malformed")
    elif ctx2.epochs_seen < 2:
        case.skip(RESUMES, "the pruner trains fewer than 2 epochs through ctx.trainer"
                  + (" besides producing its stage artifacts (stored)" if ctx2.artifacts.used else ""))
    else:
        case.step("interrupt the pruner's training half-way, then resume")
        _check_resume(setting, model_name, sparsity, workdir, masks, ctx2.epochs_seen, case)
    case.emit(CaseDone(model_name, sparsity, time.perf_counter() - t0))


def _check_masks(cls: type[Pruner], ctx, masks: dict, sparsity: float, case: Case) -> bool:
    """Names, dtype, shapes; sparsity by kind and some weight kept when those are right. True: the masks are
    well formed."""
    expected = set(ctx.prunable)
    case.add(COVER, set(masks) == expected,
             f"missing {sorted(expected - set(masks))}, extra {sorted(set(masks) - expected)}")
    bad_dtype = [n for n, m in masks.items() if not isinstance(m, torch.Tensor) or m.dtype != torch.bool]
    case.add(BOOLEAN, not bad_dtype, f"not bool: {bad_dtype}")
    bad_shape = [n for n, m in masks.items() if n in ctx.prunable and
                 tuple(getattr(m, "shape", ())) != tuple(ctx.prunable[n].shape)]
    case.add(SHAPES, not bad_shape, f"wrong shape: {bad_shape}")
    valid = not bad_dtype and not bad_shape and set(masks) == expected
    if not valid:
        return False
    if cls.ignores_sparsity:
        case.skip(sparsity_check(cls), "the pruner ignores the sparsity (a dense reference)")
        case.skip(KEEPS, "the pruner ignores the sparsity (a dense reference)")
        return True
    achieved = 1.0 - masking.global_density(masks)
    detail = f"achieved {achieved:.5f}, target {sparsity}, tolerance {cls.sparsity_tolerance}"
    if cls.sparsity_kind == SparsityKind.LEARNED:
        case.add(sparsity_check(cls), 0.0 <= achieved < 1.0, detail)
    else:
        case.add(sparsity_check(cls), masking.sparsity_on_target(masks, sparsity, cls.sparsity_tolerance), detail)
    case.add(KEEPS, any(bool(m.any()) for m in masks.values()),
             "every prunable weight removed: the network computes a constant")
    return True


def _check_weights_left_alone(cls: type[Pruner], result: PruneResult, model, before: dict, case: Case,
                              ctx=None) -> None:
    if cls.changes_weights:
        case.skip(LEFT_ALONE, "the pruner declares changes_weights")
    elif result.weights_changed:
        case.add(DECLARES, False, "returned weights_changed=True but the class does not set changes_weights = True")
        case.skip(LEFT_ALONE, "the pruner says it changed them (weights_changed=True)")
    else:
        after = getattr(ctx, "weights_after_prune", None) or {n: p.detach() for n, p in model.named_parameters()}
        changed = [n for n in after if not torch.equal(after[n], before[n])]
        case.add(LEFT_ALONE, not changed, f"changed without declaring it: {changed}")


def _check_determinism(setting: Setting, model_name: str, sparsity: float, workdir: Path, masks: dict, ctx,
                       case: Case):
    """Prune again with the same seed and the global RNG elsewhere: the same masks, stored stages reused.
    Returns the second run's context (None when it failed)."""
    try:
        _, _, ctx2, again = prune_once(setting, model_name, sparsity, workdir, global_rng_seed=1)
        again = as_result(setting.cls, again).masks
    except BaseException as exc:
        case.add(DETERMINISTIC, False, f"second run failed: {failure_text(exc)}")
        case.skip(STAGES, "the second run failed")
        return None
    same = set(again) == set(masks) and all(torch.equal(again[n], masks[n]) for n in masks)
    case.add(DETERMINISTIC, same, "two runs with seed 0 gave different masks (draw random numbers from "
             "ctx.generator, not the global RNG)")
    if ctx.artifacts.used or ctx2.artifacts.used:
        produced_again = [n for n, r in ctx2.artifacts.used.items() if r.produced]
        case.add(STAGES, not produced_again, f"produced again although stored: {produced_again} (the artifact "
                 f"config must not change between runs that can share it)")
    else:
        case.skip(STAGES, "the pruner uses no stage artifacts")
    return ctx2


def _check_resume(setting: Setting, model_name: str, sparsity: float, workdir: Path, masks: dict,
                  epochs_seen: int, case: Case) -> None:
    """Interrupt the pruner's training half-way, run again on the same checkpoints: the same masks."""
    checkpoints = workdir / "checkpoints"
    try:
        prune_once(setting, model_name, sparsity, workdir, checkpoints=checkpoints,
                   interrupt_at=max(1, epochs_seen // 2))
        case.add(RESUMES, False, "the interruption did not happen")
        return
    except _Interrupt:
        pass
    except BaseException as exc:
        case.add(RESUMES, False, f"first attempt failed: {failure_text(exc)}")
        return
    try:
        _, _, _, out = prune_once(setting, model_name, sparsity, workdir, checkpoints=checkpoints)
    except BaseException as exc:
        case.add(RESUMES, False, f"resumed attempt failed: {failure_text(exc)}")
        return
    again = out.masks if isinstance(out, PruneResult) else dict(out)
    same = set(again) == set(masks) and all(torch.equal(again[n], masks[n]) for n in masks)
    case.add(RESUMES, same, "a resumed prune gave other masks than an uninterrupted one: train through ctx.trainer "
             "and keep every random draw on ctx.generator")
