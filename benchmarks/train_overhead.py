"""The harness's training loop against a plain PyTorch loop doing the same work, side by side in one process.

    .venv/bin/python benchmarks/train_overhead.py [--steps 200] [--reps 5] [--model lenet5] [--device cpu]

Same model, optimizer (SGD, momentum, weight decay), batch size, data (tensors in memory) and number of steps;
dense, and masked at sparsity 0.9 (the plain loop then masks gradients and re-applies the mask after each step,
as a hand-written masked loop does). Repetitions are interleaved; the median ratio is printed. CPU time on CPU,
wall time with synchronisation on CUDA.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench_harness.api import make_recipe
from bench_harness.contract import masking
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import get_registry
from bench_harness.running.training import train


def _model(name: str, device):
    torch.manual_seed(0)
    return build_model(get_registry().get("model", name), name, 10, 1, 28, {}).to(device)


def _clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def plain_loop(model, loader, steps, device, masks=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(device)) for n, m in (masks or {}).items()]
    for p, m in pairs:
        p.register_hook(lambda g, m=m: g * m)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, m in pairs:
                    p.mul_(m)
            done += 1
            if done == steps:
                break


def harness_loop(model, loader, steps, device, masks=None):
    epochs = steps // len(loader)
    recipe = make_recipe({"epochs": epochs, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
                          "schedule": "constant", "batch_size": loader.batch_size})
    train(model, loader, recipe, device, masks, epochs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = 128 * 50
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=128, shuffle=True, generator=g, drop_last=True)
    steps = (args.steps // len(loader)) * len(loader) or len(loader)
    masks = masking.topk_masks({k: torch.rand(v.shape, generator=g) for k, v in
                                masking.prunable_parameters(_model(args.model, device)).items()}, 0.1)
    results = {"dense": [], "masked": []}
    for _ in range(args.reps):
        for kind, m in (("dense", None), ("masked", masks)):
            times = {}
            for name, loop in (("plain", plain_loop), ("harness", harness_loop)):
                model = _model(args.model, device)
                t0 = _clock(device)
                loop(model, loader, steps, device, m)
                times[name] = _clock(device) - t0
            results[kind].append(times["harness"] / times["plain"])
    print(f"{args.model}, {steps} steps of batch 128, {args.reps} interleaved repetitions, {device}, "
          f"{torch.get_num_threads()} threads")
    for kind, ratios in results.items():
        print(f"  {kind:6}: harness / plain = {statistics.median(ratios):.3f} (median; "
              f"min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
