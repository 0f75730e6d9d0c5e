"""Per-layer densities and pruning wall time of SNIP and SynFlow on CIFAR ResNet-20.

    .venv/bin/python benchmarks/pai_resnet20_densities.py [--density 0.134217728] [--threads 2]

Scoring data for SNIP: 100 real Fashion-MNIST training images (Debian's dataset-fashion-mnist), padded to
32x32 and repeated over 3 channels (CIFAR-10 itself is not available offline here). SynFlow is data-free.
Wall time includes every round (SynFlow: 100). Times are this machine's; compare methods within one run.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import bench_harness
from bench_harness.contract.datasets import head, make_loader
from bench_harness.contract.masking import layer_densities
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import get_registry


def scoring_batch(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    spec = get_registry().get("dataset", "fashion_mnist")
    train = head(spec.load(root="data", split="train", augment=False), 60000)
    x, y = next(iter(make_loader(train, n, True, 0)))
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1), y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--density", type=float, default=0.8 ** 9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = scoring_batch()
    registry = get_registry()
    results = {}
    for name, params in (("snip", {}), ("synflow", {"rounds": 100})):
        torch.manual_seed(0)
        model = build_model(registry.get("model", "resnet20"), "resnet20", 10, 3, 32)
        t0 = time.perf_counter()
        masks = bench_harness.prune(model, name, 1.0 - args.density, data=data, **params)
        results[name] = (time.perf_counter() - t0, layer_densities(masks))
    print(f"ResNet-20, density {args.density:.6f} (sparsity {1 - args.density:.6f}), {args.threads} threads")
    print(f"{'layer':<28}" + "".join(f"{n:>12}" for n in results))
    for layer in next(iter(results.values()))[1]:
        print(f"{layer:<28}" + "".join(f"{results[n][1][layer]:>12.4f}" for n in results))
    print(f"{'pruning wall seconds':<28}" + "".join(f"{results[n][0]:>12.2f}" for n in results))


if __name__ == "__main__":
    main()
