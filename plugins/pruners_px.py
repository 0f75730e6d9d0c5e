"""PX — Path eXclusion (Iurada, Ciccone, Tommasi, CVPR 2024), both variants of the official code
(iurada/px-ntk-pruning), on any ReLU network.

Every round (100 by default, exponential schedule, global threshold) scores the masked network with three
views of it:

1. activation view: the network's weights, run on the real batch x; the 0/1 gate ``1[pre-activation > 0]`` of
   every ReLU call is recorded, in call order;
2. path-activation view ("jvf", train mode): weights set to one, each ReLU replaced by "multiply by the recorded
   gate"; output z1 (no gradient);
3. path-kernel view ("pk", train mode): weights squared, ReLUs removed; output z2.

R = Σ z1 ⊙ z2 over the scoring batches, and a weight's score is |∂R/∂(θ²)| · θ².

``px`` (default) is the current official code:
- activation view in eval(); jvf input x², pk input all-ones shaped like x;
- every state entry (weights, biases, BatchNorm parameters AND buffers) is set to 1 in jvf and squared in pk,
  except the classifier (``fc``) and BatchNorms whose name contains ``bn``, which keep their values in both;
- scoring data: the first ``examples_per_class`` training images of each class, in data set order.
``px_cvpr2024`` is the April-2024 code (commit 82ce2bf):
- all views in train(); x feeds all three views;
- jvf sets only the prunable weights to their mask (biases, BN keep values); pk squares everything except
  ``bn``-named entries, the classifier included;
- scoring data: the first ``batch_limit`` batches of the suite's scoring loader;
- score |∂R/∂θ²| · θ⁴ · m.
The two give very different masks (IoU ≈ 0.07 on ResNet-20 at 98.2 % sparsity according to the method notes).

Speed: the views are built once and only their masked weights are rewritten each round, with the same values
and operations as the official code (``reuse_views=False`` rebuilds them every round, as the official code does;
same masks, slower).

A property of the current official code worth knowing: on networks with BatchNorm before a global average pool
(ResNets), the pk view's output on the all-ones input is analytically constant — BN in train mode over identical
rows gives every channel a zero spatial mean, which the pooling returns — so ∂R/∂θ² is analytically zero for the
layers before the pool and the computed scores are float rounding residue. This implementation reproduces the
official operations in the official order (per batch, same batch shapes) so that its masks match; it does not
"fix" the method.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench_harness import hookimpl
from bench_harness.datasets import first_per_class
from bench_harness.pruner import Requirements, param
from bench_harness.score_pruner import ScoreParams, ScorePruner
from bench_harness_plugins.relu_gates import relu_gates


@dataclass(frozen=True)
class ViewRules:
    activation_train_mode: bool
    jvf_input: str  # "square" | "x"
    pk_input: str  # "ones" | "x"
    keep_classifier: bool  # the classifier keeps its values in jvf and pk
    fill_all_state: bool  # jvf: every non-kept state entry -> 1 (else only prunable weights -> mask)
    weight_power: int  # score = |dR/dθ²| · θ^power (· m for the April code)


CURRENT = ViewRules(False, "square", "ones", True, True, 2)
CVPR2024 = ViewRules(True, "x", "x", False, False, 4)


def classifier_names(model: nn.Module, substrings: tuple[str, ...]) -> set[str]:
    """Module names treated as the classifier: names containing one of ``substrings`` (official: "fc") and,
    structurally, the last Linear layer of the model."""
    names = {n for n, m in model.named_modules() if n and any(s in n.split(".")[-1] for s in substrings)}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        names.add(linears[-1])
    return names


def _owner(entry: str) -> str:
    return entry.rsplit(".", 1)[0] if "." in entry else ""


class PXViews:
    """The three views of a model; :meth:`set_masks` rewrites only what depends on the masks."""

    def __init__(self, model: nn.Module, prunable: list[str], rules: ViewRules, bn_substring: str,
                 classifier_substrings: tuple[str, ...]) -> None:
        self.rules, self.prunable = rules, prunable
        self.act, self.jvf, self.pk = (copy.deepcopy(model) for _ in range(3))
        self.act.train(rules.activation_train_mode)
        self.jvf.train()
        self.pk.train()
        classifier = classifier_names(model, classifier_substrings)
        bn_modules = {n for n, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_substring in n.split(".")[-1]}
        self.original = {n: p.detach().clone() for n, p in model.state_dict().items()}

        def kept(entry: str, in_jvf: bool) -> bool:
            owner = _owner(entry)
            if owner in bn_modules:
                return True
            return owner in classifier and rules.keep_classifier

        with torch.no_grad():
            for name, t in self.jvf.state_dict().items():
                if name in prunable or not rules.fill_all_state or kept(name, True):
                    continue
                t.fill_(1)
            for name, t in self.pk.state_dict().items():
                if name in prunable or kept(name, False) or not t.is_floating_point():
                    continue
                t.pow_(2)
        self.pk_params = dict(self.pk.named_parameters())
        self.act_params = dict(self.act.named_parameters())
        self.jvf_params = dict(self.jvf.named_parameters())
        self.squared = {n: not kept(n, False) for n in prunable}  # pk holds θ² (else θ) for these
        for p in self.pk.parameters():
            p.requires_grad_(False)
        for n in prunable:
            self.pk_params[n].requires_grad_(True)
        self.checked = False  # the first pass of each view runs with module tracking (names bad activations)

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        for n in self.prunable:
            m = masks[n].to(self.original[n].dtype)
            theta = self.original[n] * m
            self.act_params[n].copy_(theta)
            self.jvf_params[n].copy_(m if self.squared[n] else theta)  # kept (classifier): original values
            self.pk_params[n].copy_(theta.pow(2) if self.squared[n] else theta)
            self.pk_params[n].grad = None

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        gates: list[torch.Tensor] = []
        with torch.no_grad(), relu_gates(self.act, "record", gates, track=not self.checked):
            self.act(x)
        return gates

    def z1(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        inp = x.pow(2) if self.rules.jvf_input == "square" else x
        with torch.no_grad(), relu_gates(self.jvf, "apply", gates, track=not self.checked):
            return self.jvf(inp)

    def z2(self, x: torch.Tensor) -> torch.Tensor:
        inp = torch.ones_like(x) if self.rules.pk_input == "ones" else x
        with relu_gates(self.pk, "identity", [], track=not self.checked):
            out = self.pk(inp)
        self.checked = True
        return out

    def scores(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.prunable:
            grad = self.pk_params[n].grad
            m = masks[n].to(self.original[n].dtype)
            theta = self.original[n] * m
            g = torch.zeros_like(theta) if grad is None else grad * m
            score = g.abs() * theta.pow(2)
            if self.rules.weight_power == 4:  # April code: p1.grad * p1 * p2 * p² = |g| θ⁴ m
                score = score * theta.pow(2) * m
            out[n] = score
        return out


@dataclass
class PXParams(ScoreParams):
    rounds: int = param(100, "rounds of the exponential schedule (official: 100)")
    examples_per_class: int = param(2, "scoring data: the first k training images of each class, in data set order")
    batch_size: int = param(128, "batch size of the scoring data (the views' BatchNorms use batch statistics)")
    bn_substring: str = param("bn", "BatchNorms whose module name contains this keep their values")
    classifier_substrings: list = param(["fc"], "modules whose name contains one of these (and the last Linear) "
                                              "are the classifier")
    reuse_views: bool = param(True, "build the views once and reuse them across rounds (False: rebuild every "
                                    "round and run pk per batch, as the official code; same scores, slower)")


@dataclass
class PXCvprParams(ScoreParams):
    rounds: int = param(100, "rounds of the exponential schedule (official: 100)")
    batch_limit: int = param(2, "scoring data: the first batch_limit batches of the suite's scoring loader")
    bn_substring: str = param("bn", "BatchNorms whose module name contains this keep their values")
    classifier_substrings: list = field(default_factory=lambda: ["fc"], metadata={"help": "unused: the April "
                                        "code squares the classifier too"})
    reuse_views: bool = param(True, "build the views once and reuse them across rounds")


class PX(ScorePruner):
    """PX, current official algorithm (the default PX variant)."""

    name = "px"
    version = "1"
    description = "PX path-exclusion NTK-trace pruning, current official code (Iurada et al., CVPR 2024)"
    requires = Requirements(data=True, labels=False)
    Params = PXParams
    rules = CURRENT

    def scoring_batches(self, ctx) -> list[torch.Tensor]:
        if ctx.dataset is not None and ctx.num_classes:
            subset = first_per_class(ctx.dataset, self.params.examples_per_class, ctx.num_classes)
            loader = DataLoader(subset, batch_size=self.params.batch_size, shuffle=False)
        else:  # Python API: pick the first k per class from the data given
            xs, ys = zip(*ctx.data())
            x, y = torch.cat(xs), torch.cat(ys)
            subset = first_per_class(TensorDataset(x, y), self.params.examples_per_class, int(y.max()) + 1)
            loader = DataLoader(subset, batch_size=self.params.batch_size, shuffle=False)
        return [batch[0].to(ctx.device) for batch in loader]

    def prune(self, model, sparsity, ctx):
        self._batches = self.scoring_batches(ctx)
        if not self._batches:
            raise ValueError("px got no scoring images")
        self._views = None
        try:
            return super().prune(model, sparsity, ctx)
        finally:
            self._views = None

    def _make_views(self, model, ctx) -> PXViews:
        return PXViews(model, list(ctx.prunable), self.rules, self.params.bn_substring,
                       tuple(self.params.classifier_substrings))

    def score(self, model, ctx):
        masks = self.masks
        if self.params.reuse_views:
            if self._views is None:
                self._views = self._make_views(model, ctx)
            views = self._views
        else:
            views = self._make_views(model, ctx)  # official structure: fresh copies each round
        views.set_masks(masks)
        for x in self._batches:  # per batch, in the official order: scores on BN networks are rounding-sensitive
            z1 = views.z1(x, views.gates(x))
            (z1 * views.z2(x)).sum().backward()
        return views.scores(masks)


class PXCvpr2024(PX):
    """PX as in the April-2024 code (commit 82ce2bf)."""

    name = "px_cvpr2024"
    description = "PX, April-2024 (CVPR-era) code: x into all views, classifier squared, score ~ |g| w^4 m"
    Params = PXCvprParams
    rules = CVPR2024

    def scoring_batches(self, ctx) -> list[torch.Tensor]:
        out = []
        for i, (x, _) in enumerate(ctx.data()):
            if i >= self.params.batch_limit:
                break
            out.append(x)
        return out


@hookimpl
def bench_register_pruners():
    return [PX, PXCvpr2024]
