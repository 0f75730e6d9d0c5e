"""PX — Path eXclusion (Iurada, Ciccone, Tommasi, CVPR 2024) on any ReLU network, as the two official codes
(iurada/px-ntk-pruning) compute it. docs/px.md has the derivations, the measured agreement with each code and the
numerical caveats.

Every round (100 by default, exponential schedule, global threshold) scores the masked network with three
views of it:

1. activation view: the masked network run on the real batch x; the 0/1 gate ``1[pre-activation > 0]`` of
   every ReLU call is recorded, in call order;
2. path-activation view ("jvf", train mode, no gradient): each ReLU replaced by "multiply by the recorded gate";
   output z1;
3. path-kernel view ("pk", train mode): weights squared, ReLUs removed; output z2.

R = Σ z1 ⊙ z2 over the scoring batches; g = ∂R/∂w_pk, the gradient with respect to the pk view's (squared)
weights, zero on pruned weights.

``px`` (the default) and ``px_cvpr2024``: the April-2024 code (commit 82ce2bf), whose computation produced the
CVPR 2024 paper's numbers. The two names compute the same thing; ``px_cvpr2024`` stays pinned to that code.

- x feeds all three views, all in train mode (BatchNorm on batch statistics);
- pk squares every state entry except BatchNorms named ``bn`` (the classifier is squared too);
- jvf: the official code means to set each prunable weight to its 0/1 mask, but writes through boolean indexing
  (``p[m > 0].fill_(1.0)``), which fills a copy: its jvf view runs with the masked weights θ·m. That jvf weight is
  also the ``p2`` of its score ``p1.grad · p1 · p2 · θ²`` (p1 = θ²m), so the score is |g|·|θ|⁵·m. ``jvf: code``
  (default) reproduces this; ``jvf: mask`` is the view the code intended (jvf weight = m, score |g|·θ⁴·m);
- scoring data: the first ``batch_limit`` batches of the scoring loader.

``px_head``: the current official code (ed6c40e).

- activation view in eval(); jvf input x², pk input all-ones shaped like x;
- every state entry (weights, biases, BatchNorm parameters and buffers) is set to 1 in jvf and squared in pk,
  except the classifier (``fc``) and BatchNorms named ``bn``, which keep their values in both;
- score |g|·θ²; scoring data: the first ``examples_per_class`` images of each class, in data set order.

It is numerically degenerate on BatchNorm networks: with the all-ones input and no ReLUs, a train-mode BN whose
output reaches the global average pool without a nonlinearity gives every channel a zero mean, so z2 is the
classifier bias and g is analytically zero; the float32 scores are rounding residue (~10⁹× their float64
values). Without BatchNorm, deep networks overflow float32 in the all-ones view (VGG-16). ``check_numerics``
(on by default for every PX variant) detects both and warns (``bench_harness.DegenerateScoresWarning``).

Speed: the views are built once per model and only their masked weights are rewritten each round, with the same
values and operations as the official code (``reuse_views: false`` rebuilds them every round, as the official
code does; same masks, slower).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench_harness import Requirements, ScoreParams, ScorePruner, first_per_class, hookimpl, param
from bench_harness_plugins.px.relu_gates import relu_gates


@dataclass(frozen=True)
class ViewRules:
    activation_train_mode: bool
    jvf_input: str  # "square" | "x"
    pk_input: str  # "ones" | "x"
    keep_classifier: bool  # the classifier keeps its values in jvf and pk
    jvf_fill: str  # "state": every non-kept state entry -> 1 | "none": θ·m (April code as run) | "mask": m
    score: str  # "head": |g| θ² | "april": |g · w_pk · w_jvf · θ²| (the April code's product)


HEAD = ViewRules(False, "square", "ones", True, "state", "head")
CVPR2024 = ViewRules(True, "x", "x", False, "none", "april")
CVPR2024_INTENDED = ViewRules(True, "x", "x", False, "mask", "april")
CURRENT = HEAD  # former name


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
        # April code as run: its jvf view (weights θ·m, input x, train mode, ReLU -> "times 1[pre-activation > 0]")
        # is the activation view itself (relu(h) = h·1[h > 0], the same operations on the same values), so z1 is
        # the activation view's output: one forward pass instead of two. Not with LeakyReLU (the official gate
        # turns it into a ReLU in jvf); the views then fall back to the gated jvf pass.
        self.z1_from_act = (rules.jvf_fill == "none" and rules.jvf_input == "x" and rules.activation_train_mode)
        self.act, self.pk = copy.deepcopy(model), copy.deepcopy(model)
        self.jvf = None if self.z1_from_act else copy.deepcopy(model)
        self._model = model
        self.act.train(rules.activation_train_mode)
        self.pk.train()
        classifier = classifier_names(model, classifier_substrings) if rules.keep_classifier else set()
        bn_modules = {n for n, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_substring in n.split(".")[-1]}
        self.original = {n: p.detach().clone() for n, p in model.state_dict().items()}
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

        def kept(entry: str) -> bool:
            owner = _owner(entry)
            return owner in bn_modules or owner in classifier

        self._kept = kept
        with torch.no_grad():
            for name, t in self.pk.state_dict().items():
                if name in prunable or kept(name) or not t.is_floating_point():
                    continue
                t.pow_(2)
        self.pk_params = dict(self.pk.named_parameters())
        self.act_params = dict(self.act.named_parameters())
        self.jvf_params: dict[str, torch.Tensor] = {}
        if self.jvf is not None:
            self._build_jvf()
        self.squared = {n: not kept(n) for n in prunable}  # pk holds θ² (else θ: the kept classifier)
        for p in self.pk.parameters():
            p.requires_grad_(False)
        for n in prunable:
            self.pk_params[n].requires_grad_(True)
        self.checked = False  # the first pass of each view runs with module tracking (names bad activations)

    @torch.no_grad()
    def _build_jvf(self) -> None:
        self.jvf = copy.deepcopy(self._model).train()
        if self.rules.jvf_fill == "state":
            for name, t in self.jvf.state_dict().items():
                if name not in self.prunable and not self._kept(name):
                    t.fill_(1)
        self.jvf_params = dict(self.jvf.named_parameters())

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        for n in self.prunable:
            m = masks[n].to(self.original[n].dtype)
            theta = self.original[n] * m
            self.act_params[n].copy_(theta)
            if self.jvf is not None:
                self._set_jvf(n, m, theta)
            self.pk_params[n].copy_(theta.pow(2) if self.squared[n] else theta)
            self.pk_params[n].grad = None

    def _set_jvf(self, n: str, m: torch.Tensor, theta: torch.Tensor) -> None:
        self.jvf_params[n].copy_(theta if self.rules.jvf_fill == "none" or not self.squared[n] else m)

    def jvf_weight(self, n: str) -> torch.Tensor:
        """The jvf view's weight (the ``p2`` of the April code's score; θ·m, the act view's, as the code runs)."""
        return self.jvf_params[n] if self.jvf is not None else self.act_params[n]

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        gates: list[torch.Tensor] = []
        with torch.no_grad(), relu_gates(self.act, "record", gates, track=not self.checked):
            self.act(x)
        return gates

    def z1(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        self._ensure_jvf()
        inp = x.pow(2) if self.rules.jvf_input == "square" else x
        with torch.no_grad(), relu_gates(self.jvf, "apply", gates, track=not self.checked):
            return self.jvf(inp)

    def z2(self, x: torch.Tensor) -> torch.Tensor:
        inp = torch.ones_like(x) if self.rules.pk_input == "ones" else x
        with relu_gates(self.pk, "identity", [], track=not self.checked):
            out = self.pk(inp)
        self.checked = True
        return out

    def accumulate(self, x: torch.Tensor) -> None:
        """Add one batch's R = Σ z1 ⊙ z2 to the pk gradients (one batch at a time, as the official codes)."""
        x = x.to(self.dtype)
        z1 = self.z1_direct(x) if self.z1_from_act else None
        if z1 is None:
            z1 = self.z1(x, self.gates(x))
        (z1 * self.z2(x)).sum().backward()

    def z1_direct(self, x: torch.Tensor) -> torch.Tensor | None:
        seen: list[str] = []
        with torch.no_grad(), relu_gates(self.act, "observe", seen, track=not self.checked):
            out = self.act(x)
        if "leaky_relu" in seen:  # the gated jvf view differs from the network: use it from now on
            self.z1_from_act = False
            return None
        return out

    @torch.no_grad()
    def _ensure_jvf(self) -> None:
        if self.jvf is None:
            self._build_jvf()
            for n in self.prunable:
                m = self.masks[n].to(self.original[n].dtype)
                self._set_jvf(n, m, self.original[n] * m)

    @torch.no_grad()
    def scores(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.prunable:
            grad = self.pk_params[n].grad
            m = masks[n].to(self.original[n].dtype)
            theta = self.original[n]  # the unmasked θ: the official p (its masks live in buffers)
            if grad is None:
                out[n] = torch.zeros_like(theta)
                continue
            g = grad * m  # the official gradient flows through weight_mask
            if self.rules.score == "april":  # p1.grad * p1 * p2, then * p**2, then abs (the official order)
                out[n] = (g * self.pk_params[n] * self.jvf_weight(n) * theta.pow(2)).abs()
            else:
                out[n] = g.abs() * theta.pow(2)
        return out


class _PXBase(ScorePruner):
    requires = Requirements(data=True, labels=False)
    check_params = {"rounds": 10}  # the same code paths as 100 rounds, in a tenth of the time
    rules: ViewRules = HEAD

    def view_rules(self) -> ViewRules:
        return self.rules

    def scoring_batches(self, ctx) -> list[torch.Tensor]:
        raise NotImplementedError

    def prune(self, model, sparsity, ctx):
        self._batches = self.scoring_batches(ctx)
        if not self._batches:
            raise ValueError(f"{self.name} got no scoring images")
        self._views: dict[int, tuple[nn.Module, PXViews]] = {}
        try:
            return super().prune(model, sparsity, ctx)
        finally:
            self._views = {}

    def _make_views(self, model, ctx) -> PXViews:
        return PXViews(model, list(ctx.prunable), self.view_rules(), self.params.bn_substring,
                       tuple(getattr(self.params, "classifier_substrings", ("fc",))))

    def score(self, model, ctx):
        masks = self.masks
        if self.params.reuse_views:
            cached = self._views.get(id(model))  # keyed by model: check_numerics scores a float64 copy
            if cached is None:
                cached = self._views[id(model)] = (model, self._make_views(model, ctx))
            views = cached[1]
        else:
            views = self._make_views(model, ctx)  # official structure: fresh copies each round
        views.set_masks(masks)
        for x in self._batches:  # per batch, in the official order
            views.accumulate(x)
        return views.scores(masks)

    def score_float64(self, model, ctx):
        try:
            return super().score_float64(model, ctx)
        finally:  # drop the float64 copy's views
            self._views = {k: v for k, v in self._views.items() if _dtype(v[0]) != torch.float64}


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@dataclass
class PXParams(ScoreParams):
    rounds: int = param(100, "rounds of the exponential schedule (official: 100)")
    batch_limit: int = param(2, "scoring data: the first batch_limit batches of the scoring loader (official: 2 "
                                "batches of 128)")
    jvf: str = param("code", "code: the jvf view keeps the masked weights θ·m, as the April-2024 code runs (its "
                             "mask fill writes into a copy), score |g|·|θ|^5·m; mask: the intended jvf view "
                             "(weights = 0/1 mask), score |g|·θ^4·m")
    bn_substring: str = param("bn", "BatchNorms whose module name contains this are not squared in the pk view")
    reuse_views: bool = param(True, "build the views once and reuse them across rounds (False: rebuild every "
                                    "round, as the official code; same scores, slower)")
    check_numerics: bool = param(True, "round 1: score again in float64 and warn (DegenerateScoresWarning) when "
                                       "the kept sets differ or a score is not finite")


@dataclass
class PXHeadParams(ScoreParams):
    rounds: int = param(100, "rounds of the exponential schedule (official: 100)")
    examples_per_class: int = param(2, "scoring data: the first k training images of each class, in data set order")
    batch_size: int = param(128, "batch size of the scoring data (the views' BatchNorms use batch statistics)")
    bn_substring: str = param("bn", "BatchNorms whose module name contains this keep their values")
    classifier_substrings: list = param(["fc"], "modules whose name contains one of these (and the last Linear) "
                                              "are the classifier")
    reuse_views: bool = param(True, "build the views once and reuse them across rounds (False: rebuild every "
                                    "round, as the official code; same scores, slower)")
    check_numerics: bool = param(True, "round 1: score again in float64 and warn (DegenerateScoresWarning) when "
                                       "the kept sets differ or a score is not finite (they do on BatchNorm "
                                       "networks: see docs/px.md)")


class PXCvpr2024(_PXBase):
    """PX as the April-2024 code (commit 82ce2bf) computes it: the computation behind the paper's numbers."""

    name = "px_cvpr2024"
    version = "2"
    description = ("PX, the April-2024 (CVPR 2024) code: x into all views, classifier squared, jvf view θ·m, "
                   "score |dR/dθ²|·|θ|^5·m")
    Params = PXParams
    rules = CVPR2024

    def view_rules(self) -> ViewRules:
        if self.params.jvf not in ("code", "mask"):
            raise ValueError(f"{self.name}: jvf must be 'code' or 'mask', got {self.params.jvf!r}")
        return CVPR2024 if self.params.jvf == "code" else CVPR2024_INTENDED

    def scoring_batches(self, ctx) -> list[torch.Tensor]:
        out = []
        for i, (x, _) in enumerate(ctx.data()):
            if i >= self.params.batch_limit:
                break
            out.append(x)
        return out


class PX(PXCvpr2024):
    """PX, the default variant: the computation behind the CVPR 2024 paper's numbers (= px_cvpr2024)."""

    name = "px"
    version = "2"
    description = ("PX path-exclusion NTK pruning (Iurada et al., CVPR 2024), the paper's computation (April-2024 "
                   "code, = px_cvpr2024)")


class PXHead(_PXBase):
    """PX as the current official code (ed6c40e) computes it; degenerate on BatchNorm networks."""

    name = "px_head"
    version = "1"
    description = ("PX, the current official code (ed6c40e): jvf x² with weights 1, pk all-ones input, classifier "
                   "kept; degenerate on BatchNorm networks (warns)")
    Params = PXHeadParams
    rules = HEAD

    def scoring_batches(self, ctx) -> list[torch.Tensor]:
        if ctx.dataset is not None and ctx.num_classes:
            subset = first_per_class(ctx.dataset, self.params.examples_per_class, ctx.num_classes)
        else:  # Python API: pick the first k per class from the data given
            xs, ys = zip(*ctx.data())
            x, y = torch.cat(xs), torch.cat(ys)
            subset = first_per_class(TensorDataset(x, y), self.params.examples_per_class, int(y.max()) + 1)
        loader = DataLoader(subset, batch_size=self.params.batch_size, shuffle=False)
        return [batch[0].to(ctx.device) for batch in loader]


@hookimpl
def bench_register_pruners():
    return [PX, PXCvpr2024, PXHead]
