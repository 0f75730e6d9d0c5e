"""`bench check-plugin`: a conformance kit for pruners.

It runs a pruner on small models (an MLP, a conv net with BatchNorm, a residual net) with synthetic data and
checks that the masks cover exactly the prunable parameters, are boolean with the right shapes, reach the
target sparsity within the declared tolerance, are identical when run twice with the same seed, and that the
weights are left alone unless the pruner declares ``changes_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench_harness import masking
from bench_harness.pruner import Pruner
from bench_harness.pruning import make_context


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


def _train_service(batches):
    def train(model, masks=None, epochs=1, start_epoch=0):
        enforcer = masking.MaskEnforcer(model, masks) if masks else None
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        for _ in range(start_epoch, epochs or 1):
            for x, y in batches():
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                if enforcer:
                    enforcer.enforce()
        if enforcer:
            enforcer.remove()
    return train


def _prune_once(cls: type[Pruner], params: Any, model_name: str, sparsity: float, seed: int = 0,
                global_rng_seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    # The global RNG differs between the two determinism runs: randomness must come from ctx.generator.
    torch.manual_seed(10_007 + global_rng_seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = _data(seed)
    ctx = make_context(model, seed=seed, batches=batches, num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                       train=_train_service(batches))
    out = cls(params).prune(model, sparsity, ctx)
    return model, before, ctx, out


def check_pruner(cls: type[Pruner], params: Any = None, sparsities: tuple[float, ...] = (0.5, 0.9),
                 models: tuple[str, ...] = tuple(MODELS)) -> list[Check]:
    from bench_harness.pruner import PruneResult

    params = params if params is not None else cls.Params()
    checks: list[Check] = []
    for model_name in models:
        for sparsity in sparsities:
            add = lambda name, ok, detail="": checks.append(Check(model_name, sparsity, name, bool(ok), detail))  # noqa: E731
            try:
                model, before, ctx, out = _prune_once(cls, params, model_name, sparsity)
            except Exception as exc:
                add("runs without error", False, f"{type(exc).__name__}: {exc}")
                continue
            add("runs without error", True)
            result = out if isinstance(out, PruneResult) else PruneResult(dict(out))
            masks = result.masks
            expected = set(ctx.prunable)
            add("masks cover exactly the prunable parameters", set(masks) == expected,
                f"missing {sorted(expected - set(masks))}, extra {sorted(set(masks) - expected)}")
            bad_dtype = [n for n, m in masks.items() if not isinstance(m, torch.Tensor) or m.dtype != torch.bool]
            add("masks are boolean tensors", not bad_dtype, f"not bool: {bad_dtype}")
            bad_shape = [n for n, m in masks.items() if n in ctx.prunable and
                         tuple(getattr(m, "shape", ())) != tuple(ctx.prunable[n].shape)]
            add("masks have the weights' shapes", not bad_shape, f"wrong shape: {bad_shape}")
            if not cls.ignores_sparsity and not bad_dtype and not bad_shape and set(masks) == expected:
                achieved = 1.0 - masking.global_density(masks)
                add("reaches the target sparsity", masking.sparsity_on_target(masks, sparsity, cls.sparsity_tolerance),
                    f"achieved {achieved:.5f}, target {sparsity}, tolerance {cls.sparsity_tolerance}")
            if not (cls.changes_weights or result.weights_changed):
                changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
                add("weights left alone", not changed, f"changed without declaring it: {changed}")
            elif result.weights_changed and not cls.changes_weights:
                add("declares that it changes weights", False, "returned weights_changed=True but the class "
                    "does not set changes_weights = True")
            try:
                _, _, _, again = _prune_once(cls, params, model_name, sparsity, global_rng_seed=1)
                again = again.masks if isinstance(again, PruneResult) else dict(again)
                same = set(again) == set(masks) and all(torch.equal(again[n], masks[n]) for n in masks)
                add("deterministic under a fixed seed", same, "two runs with seed 0 gave different masks (draw random "
                    "numbers from ctx.generator, not the global RNG)")
            except Exception as exc:
                add("deterministic under a fixed seed", False, f"second run failed: {type(exc).__name__}: {exc}")
    return checks
