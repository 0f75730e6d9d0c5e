"""Writes tests/fixtures/lamp/official.pt: LAMP scores and masks of the official code on a small network.

The official code (jaeho-lee/layer-adaptive-sparsity, ``tools/pruners.py``: ``_normalize_scores``,
``prune_weights_reparam``, ``prune_weights_lamp``) runs OUTSIDE the project tree, imported from a checkout given
by ``--official`` (e.g. ``git archive`` of a fetched mirror under /tmp); nothing of it is copied here.

The network: conv(3→8, 3x3), conv(8→16, 3x3), linear(256→32), linear(32→10), PyTorch default init with seed 0, each
layer's weights then scaled (3, 1, 0.2, 1) so that LAMP's layer-wise normalisation matters. Stored: the weights,
the official scores (``_normalize_scores(w**2)``, float32 as the official code runs, and float64 with the default
dtype float64), and the official masks (``weight_mask`` after ``prune_weights_lamp``) at several sparsities.

Usage: PYTHONPATH=.:.pypath python scripts/lamp_official_fixtures.py --official /tmp/lamp-official \
           --commit 94e53b1c45c41add98b5c9bc3b03e7203a620221
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lamp" / "official.pt"
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
SCALES = (3.0, 1.0, 0.2, 1.0)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="checkout of jaeho-lee/layer-adaptive-sparsity")
    ap.add_argument("--commit", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.official)
    from tools import pruners  # the official module

    model = network()
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    with torch.no_grad():
        for n, scale in zip(names, SCALES):
            dict(model.named_parameters())[n].mul_(scale)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}

    scores32 = {n: pruners._normalize_scores(w.clone() ** 2) for n, w in weights.items()}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        scores64 = {n: pruners._normalize_scores(w.double() ** 2) for n, w in weights.items()}
    finally:
        torch.set_default_dtype(default)

    masks = {}
    for sparsity in SPARSITIES:
        m = copy.deepcopy(model)
        pruners.prune_weights_reparam(m)
        pruners.prune_weights_lamp(m, sparsity)
        modules = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        masks[sparsity] = {n: mod.weight_mask.detach().bool().clone() for n, mod in zip(names, modules)}
        kept = sum(int(v.sum()) for v in masks[sparsity].values())
        print(f"sparsity {sparsity}: kept {kept} of {sum(w.numel() for w in weights.values())}, per layer "
              f"{[int(v.sum()) for v in masks[sparsity].values()]}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"source": f"jaeho-lee/layer-adaptive-sparsity@{args.commit} tools/pruners.py",
                "weights": weights, "scores32": scores32, "scores64": scores64,
                "masks": {str(s): v for s, v in masks.items()}}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
