"""SNOWS pruning time: the harness's ``snows`` against the official code (mazumder-lab/SNOWS, CNN_pruning/) on the
same work, back to back in one process: ResNet-20 (same weights), the same calibration images, 70 % of all
parameters removed from the 18 block convs (cap 0.8), warm start, K-step Newton-CG.

    .venv/bin/python benchmarks/snows_speed.py --official /tmp/snows-official/CNN_pruning [--examples 256 --k 4 --cg 20]

The official code is imported from the path given (never copied into this tree); it needs ``detectors`` at import
time only, which is stubbed, and ``joblib`` (``pip install --target /tmp/pydeps joblib``, then
``PYTHONPATH=/tmp/pydeps``). At its HEAD (750497f) ``prune/SNOWS.py`` does not compile: ``prune_and_update`` has its
whole body commented out; add a ``pass`` line under its ``def`` in the /tmp checkout (the function is dead code).
Its per-block test evaluations run on 8 images, so they cost nothing. Figures are printed, never asserted
(docs/measurements.md has the measured ones).
"""
from __future__ import annotations

import argparse
import sys
import time
import types

import torch

BLOCK_CONVS = r"layers\.\d+\.conv[12]\.weight"


def harness_model(seed: int):
    from bench_harness_plugins.providers.archs.cifar_resnet import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(20)
    with torch.no_grad():  # a "trained-looking" model: non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def official_state(model) -> dict:
    """The harness ResNet-20's state dict under the official names (layer{s}.{b}, downsample)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            stage, block = divmod(int(i), 3)
            k = f"layer{stage + 1}.{block}.{rest.replace('shortcut', 'downsample')}"
        out[k] = v
    return out


def run_ours(model, x, args) -> float:
    import bench_harness

    start = time.perf_counter()
    bench_harness.prune(model, "snows", args.sparsity, data=(x, torch.zeros(len(x), dtype=torch.long)),
                        prunable=BLOCK_CONVS, sparsity_of="all", max_layer_sparsity=0.8, k_step=args.k,
                        max_cg_iterations=args.cg, batch_size=args.batch_size, newton_passes=args.passes)
    return time.perf_counter() - start


def import_official(path: str):
    """The official ResNet-20 and LayerPruner (``prune/`` first: its ``helpers`` shadows the top-level one)."""
    sys.modules.setdefault("detectors", types.ModuleType("detectors"))
    sys.path[:0] = [f"{path}/prune", path]
    from model.resnet_cifar10_manual import resnet20  # noqa: E402 (from --official)
    from prune.Layer_pruner_new import LayerPruner  # noqa: E402
    return resnet20, LayerPruner


def run_official(model, x, args) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    resnet20, LayerPruner = import_official(args.official)

    official = resnet20()
    official.load_state_dict(official_state(model))
    official.name = "resnet20_cifar10"
    official.eval()
    y = torch.zeros(len(x), dtype=torch.long)
    data = TensorDataset(x, y)
    test = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)
    params = [n for n, _ in official.named_parameters() if n.endswith("weight") and ("conv" in n or "fc" in n)]
    pruner = LayerPruner(model=official, params=params, train_dataset=data, train_dataloader=test,
                         test_dataloader=test, nsamples=len(x), criterion=torch.nn.functional.cross_entropy,
                         lambda_inv=1e-4, gradseed=0, device="cpu", algo="SNOWS")
    pruner.scaled = True
    start = time.perf_counter()
    pruner.prune_unstructured_global(target_sparsity=args.sparsity * 100, max_layer_sparsity=80.0, device="cpu",
                                     k_step=args.k, w_warm=True, batching=True, batch_size=args.batch_size,
                                     max_CG_iterations=args.cg, mask_alg="MP", stagnation_threshold=0.995)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="path of the official CNN_pruning/ folder (omit: ours only)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--cg", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x = torch.randn(args.examples, 3, 32, 32)
    model = harness_model(0)
    if args.official:
        import_official(args.official)  # fail before the long run, not after it
    ours = run_ours(harness_model(0), x, args)
    print(f"harness snows: {ours:.1f} s  ({args.examples} images, K={args.k}, CG<={args.cg}, batch {args.batch_size})")
    if args.official:
        theirs = run_official(model, x, args)
        print(f"official SNOWS: {theirs:.1f} s")
        print(f"ratio harness / official: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
