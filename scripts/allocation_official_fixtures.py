"""Writes tests/fixtures/allocation/erdos_renyi.json: the layer sparsities of the official ERK / ER code.

The official functions run OUTSIDE the project tree, from their own sources:
- google-research/rigl ``rigl/sparse_utils.py`` ``get_sparsities_erdos_renyi`` (TF1 masks: objects with ``.name``
  and ``.shape.as_list()``; TensorFlow itself is not needed, only ``tf.logging``, which is stubbed);
- google-research/jaxpruner ``jaxpruner/sparsity_distributions.py`` ``get_sparsities_erdos_renyi`` (numpy only;
  jax/flax/chex are not imported).
Each function is taken from its file with ``ast`` (with ``get_n_zeros``, which it calls) and executed in a fresh
namespace; nothing of it is copied into the project. Both must agree on every case (they are the same algorithm),
and the RigL result is stored.

Shapes are the prunable weights of the harness's LeNet-5, ResNet-20 and VGG-11 (PyTorch layout, stored as such);
the official code gets them in its own layout (TF/Flax: conv kernels (kh, kw, in, out), dense (in, out)), which
matters for ER (it reads ``shape[-2:]`` as (n_in, n_out)).

Usage (checkouts of both repositories under /tmp, e.g. ``git archive`` of a fetched mirror):
    PYTHONPATH=.:.pypath python scripts/allocation_official_fixtures.py \
        --rigl /tmp/alloc-official/rigl/sparse_utils.py \
        --jaxpruner /tmp/alloc-official/jaxpruner/sparsity_distributions.py \
        --rigl-commit d39fc7d46505cb3196cb1edeb32ed0b6dd44c0f9 \
        --jaxpruner-commit f133ee50f31a03d0152b8b272edb534065152f5d
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "allocation" / "erdos_renyi.json"


def load_functions(path: str, names: list[str], namespace: dict) -> dict:
    source = Path(path).read_text()
    tree = ast.parse(source)
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        raise SystemExit(f"{path}: no function {sorted(missing)}")
    module = ast.Module(body=wanted, type_ignores=[])
    exec(compile(module, path, "exec"), namespace)  # noqa: S102 - the official code, run outside the tree
    return namespace


def official_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch (out, in, *kernel) -> TF/Flax (*kernel, in, out)."""
    return (*shape[2:], shape[1], shape[0])


class _Shape:
    def __init__(self, shape):
        self._shape = list(shape)

    def as_list(self):
        return list(self._shape)


class _Mask:
    def __init__(self, name, shape):
        self.name = f"{name}/mask:0"
        self.shape = _Shape(shape)


def model_shapes() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    from bench_harness.contract import masking
    from bench_harness_plugins.providers.archs.cifar_resnet import CifarResNet
    from bench_harness_plugins.providers.archs.small import VGG, LeNet5

    models = {"lenet5": LeNet5(10, 1, 28), "resnet20": CifarResNet(20, 10, 3, 16), "vgg11": VGG(11, 10, 3)}
    out = {k: [(n, tuple(p.shape)) for n, p in masking.prunable_parameters(m).items()] for k, m in models.items()}
    # a case where most layers saturate: a tiny conv, a 1x1 conv and a huge linear layer
    out["saturating"] = [("conv", (8, 3, 3, 3)), ("pointwise", (16, 8, 1, 1)), ("fc", (512, 4096)),
                         ("head", (10, 512))]
    out["mlp2"] = [("fc1", (4, 8)), ("fc2", (2, 4))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rigl", required=True, help="path of rigl/sparse_utils.py")
    ap.add_argument("--jaxpruner", required=True, help="path of jaxpruner/sparsity_distributions.py")
    ap.add_argument("--rigl-commit", required=True)
    ap.add_argument("--jaxpruner-commit", required=True)
    args = ap.parse_args()

    tf_stub = types.SimpleNamespace(logging=types.SimpleNamespace(info=lambda *a, **k: None))
    rigl = load_functions(args.rigl, ["get_n_zeros", "mask_extract_name_fn", "get_sparsities_erdos_renyi"],
                          {"np": np, "tf": tf_stub, "re": __import__("re"), "DEFAULT_ERK_SCALE": 1.0})
    jaxp = load_functions(args.jaxpruner, ["get_n_zeros", "get_sparsities_erdos_renyi"],
                          {"np": np, "logging": logging.getLogger("jaxpruner-official")})

    cases = []
    settings = [(a, s, 1.0) for a in ("erk", "er") for s in (0.5, 0.8, 0.9, 0.95, 0.98)]
    settings += [("erk", 0.9, 0.5), ("erk", 0.98, 2.0)]
    for model, layers in model_shapes().items():
        for allocation, sparsity, power in settings:
            if model == "mlp2" and sparsity > 0.9:
                continue
            include_kernel = allocation == "erk"
            masks = [_Mask(n, official_layout(s)) for n, s in layers]
            r = rigl["get_sparsities_erdos_renyi"](masks, sparsity, {}, include_kernel, erk_power_scale=power)
            r = {m.name.split("/mask:0")[0]: float(v) for m, v in zip(masks, r.values())}
            j = jaxp["get_sparsities_erdos_renyi"]({n: official_layout(s) for n, s in layers}, sparsity, None,
                                                   include_kernel=include_kernel, erk_power_scale=power)
            j = {n: float(v) for n, v in j.items()}
            if r != j:
                raise SystemExit(f"RigL and JaxPruner disagree on {model} {allocation} {sparsity}: {r} vs {j}")
            cases.append({"id": f"{model}-{allocation}-s{sparsity}" + (f"-p{power}" if power != 1.0 else ""),
                          "model": model, "allocation": allocation, "sparsity": sparsity, "erk_power_scale": power,
                          "shapes": [[n, list(s)] for n, s in layers], "sparsities": r})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "source": {"rigl": f"google-research/rigl@{args.rigl_commit} rigl/sparse_utils.py "
                           "get_sparsities_erdos_renyi",
                   "jaxpruner": f"google-research/jaxpruner@{args.jaxpruner_commit} "
                                "jaxpruner/sparsity_distributions.py get_sparsities_erdos_renyi"},
        "note": "shapes in PyTorch layout; the official code got them as (*kernel, in, out); both agree exactly",
        "cases": cases}, indent=1) + "\n")
    saturated = sum(any(v == 0.0 for v in c["sparsities"].values()) for c in cases)
    print(f"wrote {len(cases)} cases ({saturated} with dense-saturated layers) to {OUT}")


if __name__ == "__main__":
    main()
