"""AutoSparse (Liu, Cheng et al., arXiv 2408.14757; official code ChengYaofeng/AutoSparse): pruning at
initialization learned from one run of iterative rewind pruning (IRP).

Two stage artifacts, produced once and shared by every run (any suite, any model) that names the same teacher:

1. ``autosparse-teacher``: a teacher network (``teacher_model`` / ``teacher_dataset`` / ``teacher_seed``, the
   suite's recipe with ``teacher_recipe`` overrides) goes through E = ``levels`` levels of magnitude IRP with the
   linear-count schedule down to density c = ``final_density`` (``imp``'s ``rewind_pruning``, trained through the
   training service). Payload: per prunable weight its initial value θ₀, its initial gradient g₀ (the
   cross-entropy gradient summed over every batch of the training data, BatchNorm in eval mode, raw scale) and
   the number of levels it survived; the achieved density per level, the teacher's training epochs and seconds.
2. ``autosparse-predictor``: a regressor from (θ₀, g₀) to the survival count min-max scaled to [0, 1] (as the
   official code: ``(s - min + 1e-7) / (max - min + 1e-7)``), MSE, Adam (lr 0.01, 10 epochs, batch 1024), trained
   through the training service over every weight of the teacher; saved as a state dict.

The pruner ``autosparse`` computes (θ₀, g₀) for the network it prunes (the same gradient convention), predicts
its scores ``chunk_size`` weights at a time, and keeps the top ``1 - sparsity`` fraction globally in one shot;
exact-zero predictions rank last (the official threshold ignores exact zeros). Without ``teacher_model`` /
``teacher_dataset`` the teacher is the run's own model / data set; naming another one is a transfer experiment
(``{name: autosparse, params: {teacher_model: resnet18_cifar, teacher_dataset: cifar10}}`` on a VGG-16 run).

The module also registers the model ``resnet18_cifar`` (the official code's CIFAR ResNet-18), the teacher of the
paper's setting. See docs/autosparse.md.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench_harness import ModelSpec, Pruner, PruneResult, Regime, Requirements, Stage, hookimpl, masking, param
from bench_harness_plugins.autosparse.predictor import ARCHITECTURES, ResNet18Cifar, build_predictor, predict
from bench_harness_plugins.imp.pruner import rewind_pruning

TEACHER = "autosparse-teacher"
PREDICTOR = "autosparse-predictor"
STAGE_VERSION = 1  # bump when what a stage computes changes: new artifact keys


@dataclass
class AutoSparseParams:
    teacher_model: str = param("", "model of the IRP teacher ('' = the run's model)")
    teacher_model_params: dict[str, Any] = param({}, "parameters of the teacher model (when teacher_model is set)")
    teacher_dataset: str = param("", "data set of the teacher ('' = the run's data set)")
    teacher_dataset_params: dict[str, Any] = param({}, "parameters of the teacher data set (when teacher_dataset "
                                                       "is set)")
    teacher_seed: int = param(0, "seed of the teacher's initialization and data order (-1: the run's seed)")
    teacher_recipe: dict[str, Any] = param({}, "recipe fields overriding the suite's recipe for every teacher level")
    levels: int = param(20, "IRP levels E of the teacher (the paper: 20)")
    final_density: float = param(0.01, "density c after the teacher's last level (the paper: 0.01)")
    prune_first: bool = param(True, "the teacher's first level prunes the untrained |θ₀| and the last one is not "
                                    "trained, as the official code (False: IMP's order, train first)")
    grad_batch_size: int = param(256, "batch size of the summed initial gradient g₀ (official prune_batchsize)")
    predictor: Literal["resnet18", "mlp", "small_mlp"] = param(
        "resnet18", "resnet18: the official lift-MLP + ResNet-18 regressor (GPU); mlp: the official FC variant; "
                    "small_mlp: 2-64-64-1 for CPU")
    predictor_epochs: int = param(10, "predictor training epochs")
    predictor_lr: float = param(0.01, "predictor Adam learning rate")
    predictor_batch_size: int = param(1024, "predictor batch size (weights per batch)")
    predictor_seed: int = param(0, "seed of the predictor's initialization and batch order")
    chunk_size: int = param(8192, "weights per prediction batch when pruning (official params_batch_size)")


# -- features ------------------------------------------------------------------------------------------------

def feature_batches(source, batch_size: int):
    """Batches for g₀: a DataLoader's data set re-batched by ``batch_size`` in data set order (the sum does
    not depend on the order but on the batch size: it is a sum of per-batch means), or any iterable of
    (x, y) batches as it is."""
    dataset = getattr(source, "dataset", None)
    if dataset is not None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return source


def initial_gradients(model, prunable, batches, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """g₀: the cross-entropy gradient of every prunable weight summed over ``batches`` (mean loss per batch),
    the model in eval mode (BatchNorm running statistics, no dropout). Augmentation draws from a forked RNG
    seeded with ``seed``: deterministic, and the caller's random state is left alone."""
    names = list(prunable)
    params = [prunable[n] for n in names]
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for x, y in batches:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                    if g is not None:
                        acc += g.float()
    finally:
        model.train(was_training)
    return {n: g.detach().cpu() for n, g in zip(names, grads)}


def scaled_labels(survived: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of survival counts to [0, 1], as the official code: (s - min + 1e-7) / (max - min + 1e-7)."""
    s = survived.double()
    return ((s - s.min() + 1e-7) / (s.max() - s.min() + 1e-7)).float()


# -- the teacher ---------------------------------------------------------------------------------------------

def _recipe_dict(recipe) -> dict[str, Any]:
    out = dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else dict(vars(recipe))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def teacher_config(params: AutoSparseParams, run) -> dict[str, Any]:
    """What identifies a teacher: model, data set, seed, recipe and the IRP settings (never the pruned run)."""
    recipe = {**_recipe_dict(run.recipe), **params.teacher_recipe}
    for key in ("test_subset", "eval_batch_size", "num_workers"):  # do not change what the teacher computes
        recipe.pop(key, None)
    return {
        "version": STAGE_VERSION,
        "model": params.teacher_model or run.model.name,
        "model_params": dict(params.teacher_model_params if params.teacher_model else run.model.params),
        "dataset": params.teacher_dataset or run.dataset.name,
        "dataset_params": dict(params.teacher_dataset_params if params.teacher_dataset else run.dataset.params),
        "seed": run.seed if params.teacher_seed < 0 else params.teacher_seed,
        "recipe": recipe,
        "levels": params.levels,
        "final_density": params.final_density,
        "prune_first": params.prune_first,
        "grad_batch_size": params.grad_batch_size,
    }


def _api_teacher_config(params: AutoSparseParams, ctx) -> dict[str, Any]:
    """The Python API (no suite run): the teacher is the model being pruned, trained on ``train_data``."""
    return {"version": STAGE_VERSION, "api": True, "seed": ctx.seed,
            "shapes": {n: list(p.shape) for n, p in ctx.prunable.items()},
            "recipe": repr(getattr(ctx.trainer, "recipe", None)), "levels": params.levels,
            "final_density": params.final_density, "prune_first": params.prune_first,
            "grad_batch_size": params.grad_batch_size}


def _build_teacher(config: dict[str, Any], ctx):
    """(model at initialization, training loader, feature batches, fit overrides) of a configured teacher, built
    by the harness's services as a run of that model, data set and seed builds them."""
    recipe = config["recipe"]
    model = ctx.services.build_model(config["model"], config["model_params"], dataset=config["dataset"],
                                     dataset_params=config["dataset_params"], seed=config["seed"])
    loader = ctx.services.train_loader(config["dataset"], config["dataset_params"], seed=config["seed"],
                                       batch_size=recipe.get("batch_size", 128), augment=recipe.get("augment", True),
                                       train_subset=recipe.get("train_subset"))
    return model, loader, feature_batches(loader, config["grad_batch_size"]), {"loader": loader, "recipe": recipe}


def produce_teacher(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The teacher stage: θ₀, g₀ and survival counts of a linear-count IRP run (module level: picklable)."""
    t0 = time.perf_counter()
    trainer = ctx.require_trainer("the AutoSparse teacher")
    if config.get("api"):
        model = copy.deepcopy(ctx.model)
        loader = ctx.train_loader
        batches = feature_batches(loader, config["grad_batch_size"]) if loader is not None else list(ctx.data())
        fit_kwargs: dict[str, Any] = {}
    else:
        model, loader, batches, fit_kwargs = _build_teacher(config, ctx)
    model.to(ctx.device)
    prunable = masking.prunable_parameters(model)
    theta0 = {n: p.detach().cpu().clone() for n, p in prunable.items()}
    grad0 = initial_gradients(model, prunable, batches, ctx.device, config["seed"])
    done = rewind_pruning(model, trainer, prunable, config["final_density"], schedule="linear_count",
                          levels=config["levels"], prune_first=config["prune_first"], phase="autosparse teacher",
                          fit_kwargs=fit_kwargs)
    return {"theta0": theta0, "grad0": grad0, "survived": done.survived, "levels": config["levels"],
            "level_densities": done.level_densities, "fits": done.fits, "epochs_trained": done.epochs_trained,
            "seconds": time.perf_counter() - t0, "num_weights": sum(p.numel() for p in theta0.values())}


# -- the predictor -------------------------------------------------------------------------------------------

def predictor_config(params: AutoSparseParams, teacher: dict[str, Any]) -> dict[str, Any]:
    return {"version": STAGE_VERSION, "teacher": teacher, "architecture": params.predictor,
            "epochs": params.predictor_epochs, "lr": params.predictor_lr, "batch_size": params.predictor_batch_size,
            "seed": params.predictor_seed}


def teacher_dataset(teacher: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 2): θ₀, g₀; scaled labels (N,)) over every weight of the teacher, in model order."""
    names = list(teacher["theta0"])
    theta = torch.cat([teacher["theta0"][n].reshape(-1).float() for n in names])
    grad = torch.cat([teacher["grad0"][n].reshape(-1).float() for n in names])
    survived = torch.cat([teacher["survived"][n].reshape(-1) for n in names])
    return torch.stack([theta, grad], dim=1), scaled_labels(survived)


def _mse(model, x, y):
    return F.mse_loss(model(x).reshape(-1), y)


def produce_predictor(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The predictor stage: trains the regressor on the teacher's weights (module level: picklable)."""
    teacher = ctx.stage(Stage(TEACHER, config["teacher"], functools.partial(produce_teacher, config["teacher"])))
    t0 = time.perf_counter()
    features, labels = teacher_dataset(teacher)
    batch = config["batch_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        predictor = build_predictor(config["architecture"])
    loader = DataLoader(TensorDataset(features, labels), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(config["seed"]), drop_last=len(labels) > batch)
    recipe = {"epochs": config["epochs"], "optimizer": "adam", "lr": config["lr"], "weight_decay": 0.0,
              "schedule": "constant", "warmup_epochs": 0, "mixed_precision": False}
    fit = ctx.require_trainer("the AutoSparse predictor").fit(
        predictor, loader=loader, loss=_mse, epochs=config["epochs"], recipe=recipe, phase="autosparse predictor")
    return {"state_dict": {k: v.detach().cpu() for k, v in predictor.state_dict().items()},
            "architecture": config["architecture"], "losses": list(fit.losses), "seconds": time.perf_counter() - t0,
            "examples": int(labels.numel()), "teacher_seconds": float(teacher["seconds"]),
            "teacher_epochs": int(teacher["epochs_trained"]), "teacher_level_densities": teacher["level_densities"]}


# -- the pruner ----------------------------------------------------------------------------------------------

def _stages(params: AutoSparseParams, teacher: dict[str, Any]) -> list[Stage]:
    pred = predictor_config(params, teacher)
    return [Stage(TEACHER, teacher, functools.partial(produce_teacher, teacher)),
            Stage(PREDICTOR, pred, functools.partial(produce_predictor, pred))]


def autosparse_masks(predictor, theta: dict[str, torch.Tensor], grad: dict[str, torch.Tensor], density: float,
                     chunk: int = 8192, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(masks, scores): predicted scores, exact zeros ranked last, the top ``density`` fraction kept globally."""
    scores = {}
    for n in theta:
        s = predict(predictor, theta[n], grad[n], chunk, device)
        scores[n] = torch.where(s == 0, torch.full_like(s, float("-inf")), s)
    return masking.topk_masks(scores, density, "global"), scores


class AutoSparse(Pruner):
    """AutoSparse: one-shot pruning at initialization by a predictor learned from an IRP teacher."""

    name = "autosparse"
    description = "AutoSparse: predicted IRP survival from (θ₀, g₀), one shot at init (teacher + predictor stages)"
    regime = Regime.AT_INIT
    requires = Requirements(data=True, labels=True)
    Params = AutoSparseParams
    check_params = {"predictor": "small_mlp"}  # the official ResNet-18 regressor takes hours on a CPU

    @classmethod
    def stages(cls, params, run):
        return _stages(params, teacher_config(params, run))

    def prune(self, model, sparsity, ctx):
        p = self.params
        teacher_cfg = teacher_config(p, ctx.run) if ctx.run is not None else _api_teacher_config(p, ctx)
        teacher_stage, predictor_stage = _stages(p, teacher_cfg)
        trained = ctx.stage(predictor_stage)  # produces the teacher first when the predictor is missing
        if TEACHER not in ctx.artifacts.used:  # the row records the teacher too (and its checksum is verified)
            ctx.stage(teacher_stage)
        with torch.random.fork_rng(devices=[]):
            predictor = build_predictor(trained["architecture"])
        predictor.load_state_dict(trained["state_dict"])
        predictor.to(ctx.device)
        theta = {n: w.detach() for n, w in ctx.prunable.items()}
        source = ctx.train_loader if ctx.train_loader is not None else list(ctx.data())
        grad = initial_gradients(model, ctx.prunable, feature_batches(source, p.grad_batch_size), ctx.device,
                                 ctx.seed)
        masks, _ = autosparse_masks(predictor, theta, grad, 1.0 - sparsity, p.chunk_size, ctx.device)
        masks = {n: m.to(ctx.prunable[n].device) for n, m in masks.items()}
        info = {"teacher_key": ctx.artifacts.used[TEACHER].key, "predictor_key": ctx.artifacts.used[PREDICTOR].key,
                "teacher_seconds": trained["teacher_seconds"], "teacher_epochs": trained["teacher_epochs"],
                "teacher_level_densities": list(trained["teacher_level_densities"]),
                "predictor_seconds": float(trained["seconds"]),
                "predictor_final_loss": float(trained["losses"][-1]) if trained["losses"] else None}
        return PruneResult(masks, info=info)


def _resnet18_cifar(num_classes, in_channels, image_size, width: int = 64):
    return ResNet18Cifar(num_classes=num_classes, in_channels=in_channels, width=width)


@hookimpl
def bench_register_pruners():
    return [AutoSparse]


@hookimpl
def bench_register_models():
    return [ModelSpec("resnet18_cifar", _resnet18_cifar,
                      "CIFAR ResNet-18 of AutoSparse's code (3x3 stem, no max-pool, widths 64-512)")]


__all__ = ["AutoSparse", "ARCHITECTURES", "autosparse_masks", "initial_gradients", "scaled_labels",
           "teacher_config", "teacher_dataset"]
