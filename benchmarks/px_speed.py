"""PX pruning time and per-layer densities on CIFAR ResNet-20 (100 rounds, 20 scoring images).

    .venv/bin/python benchmarks/px_speed.py [--density 0.018] [--rounds 100] [--threads 2]

Reference measured in the same run: the same pruner with ``reuse_views=False``, which rebuilds the three
views every round as the official code (iurada/px-ntk-pruning) does. Both must give the same masks; the ratio
is the speed-up from building the views once. Scoring images: the first 2 per class of Fashion-MNIST padded to
32x32x3 (CIFAR-10 is not available offline here).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

import bench_harness
from bench_harness.contract.datasets import first_per_class
from bench_harness.contract.masking import layer_densities
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import get_registry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--density", type=float, default=0.018)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = get_registry()
    train = registry.get("dataset", "fashion_mnist").load(root="data", split="train", augment=False)
    x, y = default_collate(list(first_per_class(train, 2, 10)))  # 20 images, grouped by class
    x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    timings, masks = {}, {}
    for reuse in (False, True):
        torch.manual_seed(0)
        model = build_model(registry.get("model", "resnet20"), "resnet20", 10, 3, 32)
        t0 = time.perf_counter()
        masks[reuse] = bench_harness.prune(model, "px", 1 - args.density, data=(x, y), rounds=args.rounds,
                                           reuse_views=reuse)
        timings[reuse] = time.perf_counter() - t0
    same = all(torch.equal(masks[True][n], masks[False][n]) for n in masks[True])
    print(f"PX on ResNet-20, density {args.density}, {args.rounds} rounds, 20 images, {args.threads} threads")
    print(f"  views rebuilt every round (official structure): {timings[False]:.2f} s")
    print(f"  views built once (default):                     {timings[True]:.2f} s "
          f"(ratio {timings[True] / timings[False]:.2f}); identical masks: {same}")
    print("per-layer density (default):")
    for name, density in layer_densities(masks[True]).items():
        print(f"  {name:<28} {density:.4f}")


if __name__ == "__main__":
    main()
