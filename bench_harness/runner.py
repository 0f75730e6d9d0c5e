"""Execute one run: data, model, (pretraining), pruning, training, evaluation, one result row."""
from __future__ import annotations

import datetime as dt
import json
import random
import time
import traceback
from typing import Any, Callable

import torch
from torch.utils.data import Subset

from bench_harness import ablations, checkpoint, masking, paths, results
from bench_harness.cache import DiskCache
from bench_harness.datasets import concrete_spec, first_per_class, head, make_loader, tensor_batches
from bench_harness.errors import BenchError
from bench_harness.metrics import flops_per_example, peak_memory_bytes
from bench_harness.models import build_model
from bench_harness.plugins import Registry, get_registry
from bench_harness.provenance import provenance, resolve_device
from bench_harness.pruner import Regime
from bench_harness.pruning import call_pruner, make_context, mask_summary
from bench_harness.suite import RunSpec
from bench_harness.training import evaluate, make_optimizer, train


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

    def __init__(self, run: RunSpec, spec, device: torch.device) -> None:
        recipe, scoring = run.recipe, run.scoring
        kw = dict(root=run.data_root, download=run.download, **run.dataset.params)
        train_set = head(spec.load(split="train", augment=recipe.augment, **kw), recipe.train_subset)
        test_set = head(spec.load(split="test", augment=False, **kw), recipe.test_subset)
        score_set = head(spec.load(split="train", augment=scoring.augment, **kw), recipe.train_subset)
        self.scoring_source = score_set
        if scoring.examples_per_class is not None:
            score_set = first_per_class(score_set, scoring.examples_per_class, spec.num_classes)
        else:
            n = scoring.examples if scoring.examples is not None else 10 * spec.num_classes
            order = (torch.randperm(len(score_set), generator=torch.Generator().manual_seed(run.seed)).tolist()
                     if scoring.shuffle else list(range(len(score_set))))
            score_set = Subset(score_set, order[:n])
        self.train = make_loader(train_set, recipe.batch_size, True, run.seed, recipe.num_workers,
                                 drop_last=len(train_set) > recipe.batch_size)
        self.test = make_loader(test_set, recipe.eval_batch_size, False, run.seed, recipe.num_workers)
        self.scoring = make_loader(score_set, scoring.batch_size, False, run.seed)
        self.input_shape = (spec.in_channels, spec.image_size, spec.image_size)


def pretrain_key(run: RunSpec) -> dict[str, Any]:
    """Cache key of a run's pretrained weights: shared by every run of the same model, data, seed and recipe."""
    return {"artifact": "pretrained", "model": run.model.name, "model_params": run.model.params,
            "dataset": run.dataset.name, "dataset_params": run.dataset.params, "seed": run.seed,
            "recipe": run.pretrain, "train_subset": run.recipe.train_subset}


def pretrained_cached(run: RunSpec) -> bool:
    return DiskCache(paths.cache_dir(run.results_root)).path(pretrain_key(run)).exists()


def _data_and_model(run: RunSpec, registry: Registry, device: torch.device):
    """The run's data loaders and its freshly initialised model (seeded: the same run gives the same weights)."""
    dspec = concrete_spec(registry.get("dataset", run.dataset.name), run.data_root, run.dataset.params)
    data = RunData(run, dspec, device)
    seed_everything(run.seed)
    model = build_model(registry.get("model", run.model.name), run.model.name, dspec.num_classes,
                        dspec.in_channels, dspec.image_size, run.model.params).to(device)
    return dspec, data, model, DiskCache(paths.cache_dir(run.results_root))


def pretrain_only(run: RunSpec, registry: Registry | None = None) -> str:
    """Compute (or find) a run's pretrained weights in the cache; the SLURM executor runs this as a stage job
    that every dependent run waits for. Returns the cache file."""
    device = resolve_device(run.device)
    _, data, model, cache = _data_and_model(run, registry or get_registry(), device)
    _pretrained_state(run, model, data, device, cache, None)
    return str(cache.path(pretrain_key(run)))


def _pretrained_state(run: RunSpec, model, data: RunData, device, cache: DiskCache, on_epoch):
    key = pretrain_key(run)

    def compute():
        train(model, data.train, run.pretrain, device, on_epoch=on_epoch)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    return cache.get_or_compute(key, compute)


BEFORE_TRAINING_KEYS = ("pretrain_seconds", "top1_pretrained", "prune_seconds", "pruner_info",
                        "top1_before_training", "top5_before_training", "loss_before_training")


def _save_checkpoint(path, run, model, optimizer, masks, row, epoch, data, epochs=None, train_seconds=0.0):
    checkpoint.save(path, {
        "run_id": run.run_id, "epoch": epoch, "epochs": epochs if epochs is not None else run.recipe.epochs,
        "train_seconds": train_seconds,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "masks": {n: m.cpu() for n, m in masks.items()},
        "row": {k: row[k] for k in BEFORE_TRAINING_KEYS if k in row},
        "rng": checkpoint.rng_state(data.train.generator),
    })


def _prune(run, pruner_cls, model, data, dspec, device, cache, row, on_epoch):
    """Pretrain if asked, prune, apply ablation and masks, evaluate before training. Returns (masks, epochs)."""
    needs_pretrained = pruner_cls.requires.pretrained or pruner_cls.regime == Regime.POST_TRAINING
    if needs_pretrained and run.pretrain is None:
        raise BenchError(f"pruner {run.pruner.name!r} prunes a pretrained model: add `pretrain: {{epochs: N, ...}}` "
                         f"to the suite (the trained weights are cached and shared by all runs of a seed)")
    pretrain_seconds = 0.0
    if run.pretrain is not None:
        t0 = time.perf_counter()
        state = _pretrained_state(run, model, data, device, cache,
                                  lambda e, loss: on_epoch and on_epoch("pretrain", e, run.pretrain.epochs, loss))
        model.load_state_dict(state)
        pretrain_seconds = time.perf_counter() - t0
        row["top1_pretrained"] = evaluate(model, data.test, device).top1
    row["pretrain_seconds"] = pretrain_seconds
    ctx = make_context(
        model, seed=run.seed, device=device, batches=tensor_batches(data.scoring, None),
        exclude_first=run.prunable.exclude_first, exclude_last=run.prunable.exclude_last,
        num_classes=dspec.num_classes, input_shape=data.input_shape, cache=cache, dataset=data.scoring_source,
        train=lambda m, masks=None, epochs=None, start_epoch=0: train(
            m, data.train, run.recipe, device, masks, epochs, start_epoch=start_epoch),
    )
    params = pruner_cls.make_params(run.pruner.params)
    t0 = time.perf_counter()
    result = call_pruner(pruner_cls, params, model, run.sparsity, ctx, run.ablation)
    row["prune_seconds"] = time.perf_counter() - t0
    masks = ablations.apply_after_pruning(run.ablation, model, result.masks, ctx.generator, run.seed)
    masking.apply_masks(model, masks)
    row["pruner_info"] = results.to_json(result.info) if result.info else None
    before = evaluate(model, data.test, device)
    row.update(top1_before_training=before.top1, top5_before_training=before.top5, loss_before_training=before.loss)
    return masks, 0 if result.weights_frozen else run.recipe.epochs


def execute_run(run: RunSpec, registry: Registry | None = None,
                on_epoch: Callable[[str, int, int, float], None] | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Execute a run and write its shard; never raises for a failure of the run itself (KeyboardInterrupt does).

    ``on_epoch(phase, epoch, total_epochs, loss)`` reports training progress. With ``resume``, training state is
    checkpointed after pruning and at every epoch end, and a checkpoint left by an interrupted attempt is
    resumed (the SLURM executor uses this).
    """
    registry = registry or get_registry()
    started = _now()
    row: dict[str, Any] = {
        "run_id": run.run_id, "suite": run.suite, "pruner": run.pruner.name,
        "pruner_params": results.to_json(run.identity().get("pruner_params", {})), "ablation": run.ablation,
        "model": run.model.name, "model_params": results.to_json(run.model.params), "dataset": run.dataset.name,
        "seed": run.seed, "target_sparsity": run.sparsity, "config": results.to_json(run.identity()),
        "started_at": started,
    }
    device = torch.device("cpu")
    registry.call_lifecycle("bench_run_started", run=run)
    try:
        entry = registry.entry("pruner", run.pruner.name)
        pruner_cls = entry.obj
        row.update(pruner_version=str(pruner_cls.version), regime=pruner_cls.regime.value,
                   pruner_distribution=f"{entry.distribution} {entry.version}".strip())
        device = resolve_device(run.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dspec, data, model, cache = _data_and_model(run, registry, device)
        ck_path = checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id)
        resumed = checkpoint.load(ck_path) if resume else None
        if resumed is not None and resumed.get("run_id") != run.run_id:
            resumed = None
        epochs = run.recipe.epochs
        optimizer = None
        if resumed is None:
            masks, epochs = _prune(run, pruner_cls, model, data, dspec, device, cache, row, on_epoch)
            start_epoch = 0
            if resume and epochs:
                optimizer = make_optimizer(model, run.recipe)
                _save_checkpoint(ck_path, run, model, optimizer, masks, row, 0, data)
        else:
            model.load_state_dict(resumed["model"])
            masks = {n: m.to(device) for n, m in resumed["masks"].items()}
            row.update(resumed["row"])
            epochs, start_epoch = resumed["epochs"], resumed["epoch"]
            optimizer = make_optimizer(model, run.recipe)
            optimizer.load_state_dict(resumed["optimizer"])
            checkpoint.restore_rng(resumed["rng"], data.train.generator)
            row["resumed_from_epoch"] = start_epoch
        t0 = time.perf_counter()
        earlier_seconds = (resumed or {}).get("train_seconds", 0.0)
        if epochs and start_epoch < epochs:
            def after_epoch(epoch, opt):
                _save_checkpoint(ck_path, run, model, opt, masks, row, epoch, data, epochs,
                                 earlier_seconds + time.perf_counter() - t0)
            train(model, data.train, run.recipe, device, masks, epochs,
                  on_epoch=lambda e, loss: on_epoch and on_epoch("train", e, epochs, loss),
                  start_epoch=start_epoch, optimizer=optimizer, after_epoch=after_epoch if resume else None)
        row["train_seconds"] = earlier_seconds + time.perf_counter() - t0
        row["epochs_trained"] = epochs
        after = evaluate(model, data.test, device)
        row.update(top1=after.top1, top5=after.top5, loss=after.loss)

        summary = mask_summary(model, masks)
        row.update(
            achieved_sparsity=summary["achieved_sparsity"], achieved_sparsity_all=summary["achieved_sparsity_all"],
            layer_density=json.dumps(summary["layer_density"]),  # model order, not sorted
            layer_collapse=bool(summary["collapsed_layers"]),
            collapsed_layers=results.to_json(summary["collapsed_layers"]),
            params_total=summary["params_total"], params_nonzero=summary["params_nonzero"],
            params_prunable=sum(m.numel() for m in masks.values()),
        )
        row["flops_dense"], row["flops_effective"] = flops_per_example(model, data.input_shape, masks, device)
        for name, metric in registry.entries["metric"].items():
            row[f"metric_{name}"] = float(metric.obj.compute(model, masks, data.test, device))
        row["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a failed run is a result row, never the end of the sweep
        if isinstance(exc, SystemExit):
            raise
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["peak_memory_bytes"] = peak_memory_bytes(device)
    row.update(provenance(device))
    row["finished_at"] = _now()
    results.write_shard(row, run.results_root, run.suite)
    if resume and row.get("status") == "ok":
        checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id).unlink(missing_ok=True)
    registry.call_lifecycle("bench_run_finished", run=run, row=row)
    return row
