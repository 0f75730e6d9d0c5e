"""Generate tests/fixtures/slt/official_counts.json: the per-layer frozen counts of the official code.

Runs the official implementation of "Partially Frozen Random Networks Contain Compact Strong Lottery Tickets"
(Otsuka et al., TMLR 2025; github.com/Hikari43/slt_within_frozen_network) from a checkout OUTSIDE this
repository, and records, for Conv-6 and the CIFAR ResNet-18, every allocation rule (epl, erk, igq), both locking
rules (r_method) and several (p, r) pairs, how many weights of each layer its ``initialize_params`` freezes as
pruned (-1) and as kept (+1). Nothing of the official code is copied: it is imported from the checkout.

For the configurations in RUNS (model, rule, locking rule, p, r, target sparsity s) it also builds the official
network at sparsity s, sets its global threshold (``set_kthvalue``, algo ``global_ep``) and records how many
weights of each layer the official mask (``GetSupermask``) prunes: the sparsity the official code achieves, e.g.
with EPL at p = s, where the truncated frozen-pruned counts exceed int(N·s).

    .venv/bin/python scripts/slt_official_counts.py /tmp/slt-official [--out tests/fixtures/slt/official_counts.json]

The test tests/test_slt.py compares plugins/slt/allocation.py against the stored file only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

PAIRS = [(0.25, 0.25), (0.5, 0.0), (0.0, 0.5), (0.3, 0.4), (0.1, 0.6), (0.8, 0.0), (0.35, 0.35), (0.05, 0.05)]
MODELS = {"conv6": "conv6", "cifar_resnet18": "resnet18"}
# (model, allocation, locking rule, p, r, sparsity): run at a target sparsity (issue 27: EPL at p = s)
RUNS = [("conv6", "epl", "sparsity_distribution", 0.5, 0.2, 0.5),
        ("conv6", "epl", "sparsity_distribution", 0.5, 0.0, 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="the official repository's checkout")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "tests/fixtures/slt/official_counts.json")
    args = parser.parse_args()
    code = args.checkout.resolve() / "image_classification"
    sys.path.insert(0, str(code))
    import torch
    from layers.supermask_conv import SupermaskConv2d  # noqa: E402  (the official code)
    from layers.supermask_linear import SupermaskLinear  # noqa: E402
    from layers.utils.get_supermask import GetSupermask  # noqa: E402
    from layers.utils.set_kthvalue import set_kthvalue  # noqa: E402
    from utils.model import get_model, initialize_params  # noqa: E402

    commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    out = {"source": "Hikari43/slt_within_frozen_network", "commit": commit, "cases": []}
    torch.manual_seed(0)
    for ours, theirs in MODELS.items():
        for allocation in ("epl", "erk", "igq"):
            for rule in ("sparsity_distribution", "density_distribution"):
                for p, r in PAIRS:
                    model = get_model(theirs, "cifar10")(num_classes=10, use_affine_bn=False, algo="global_ep",
                                                         sparsity=0.9, scale_method=None, width_factor=None)
                    try:
                        with contextlib.redirect_stdout(io.StringIO()):
                            initialize_params(model, "kaiming_uniform", "kaiming_normal", allocation, p, r, rule)
                    except AssertionError as exc:  # the official code refuses the case
                        out["cases"].append({"model": ours, "allocation": allocation, "locking_rule": rule,
                                             "p": p, "r": r, "error": f"AssertionError {exc}"})
                        continue
                    layers = [m for m in model.modules() if isinstance(m, (SupermaskConv2d, SupermaskLinear))]
                    out["cases"].append({
                        "model": ours, "allocation": allocation, "locking_rule": rule, "p": p, "r": r,
                        "numel": [m.weight.numel() for m in layers],
                        "pruned": [int((m.ternary_frozen_mask == -1).sum()) for m in layers],
                        "kept": [int((m.ternary_frozen_mask == 1).sum()) for m in layers],
                    })
                    print(ours, allocation, rule, p, r, "pruned", out["cases"][-1]["pruned"][:3], "...")
    out["runs"] = []
    for ours, allocation, rule, p, r, sparsity in RUNS:
        model = get_model(MODELS[ours], "cifar10")(num_classes=10, use_affine_bn=False, algo="global_ep",
                                                   sparsity=sparsity, scale_method=None, width_factor=None)
        with contextlib.redirect_stdout(io.StringIO()):
            initialize_params(model, "kaiming_uniform", "kaiming_normal", allocation, p, r, rule)
        set_kthvalue(model, "global_ep", "cpu")
        layers = [m for m in model.modules() if isinstance(m, (SupermaskConv2d, SupermaskLinear))]
        masks = [GetSupermask.apply(m.score.abs(), m.kthvalue.data[0], m.ternary_frozen_mask) for m in layers]
        out["runs"].append({
            "model": ours, "allocation": allocation, "locking_rule": rule, "p": p, "r": r, "sparsity": sparsity,
            "numel": [m.weight.numel() for m in layers],
            "pruned": [int((m.ternary_frozen_mask == -1).sum()) for m in layers],
            "kept": [int((m.ternary_frozen_mask == 1).sum()) for m in layers],
            "threshold": float(layers[0].kthvalue.data[0]),
            "mask_pruned": [int((mask == 0).sum()) for mask in masks],
        })
        print(ours, allocation, rule, p, r, "s", sparsity, "mask pruned", sum(out["runs"][-1]["mask_pruned"]),
              "of", sum(out["runs"][-1]["numel"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(out['cases'])} cases to {args.out}")


if __name__ == "__main__":
    main()
