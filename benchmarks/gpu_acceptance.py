"""GPU acceptance of the training path (issue 30): images/s of a plain PyTorch loop and of the harness's paths, the
compute floor, and a correctness line, printed as one table. Needs nothing from the network.

    scripts/gpu_acceptance.sh            # on one GPU: CIFAR-shaped synthetic data (50,000 images), ResNet-20
    scripts/gpu_acceptance.sh --smoke    # tiny, on any device (the CPU too): checks the script end to end

Throughput (CIFAR-shaped uint8 synthetic data written in CIFAR-10's pickle format and read by the built-in
``cifar10`` data set, random crop + flip, ResNet-20, batch 512; the first epoch is a warm-up, the rest timed):

- plain loop: what a user would write: torchvision-style per-image transforms, a DataLoader with 4 workers and
  pinned memory, SGD, fp32, no masks;
- harness default: ``running.training.train`` on the harness's DataLoader (``num_workers: 0``), masks at 80 %;
- harness, data on device: ``data_on_device: true`` (batched augmentation on the device), fp32, then bf16, then
  bf16 + channels_last, then + compile (on a GPU, or with ``--compile``);
- packed: ``--packed`` runs (8) trained as one vmap over the shared device data, bf16: images/s of all of them,
  against the single run with the same settings (= sequential runs);
- compute floor: forward + backward + SGD step of the model on batches already on the device, fp32 and
  bf16 + channels_last (no data work, no masks).

Correctness (whole runs through ``bench run``: magnitude pruning at 80 %, ResNet-20; Fashion-MNIST padded to
32x32x3 when its files are found (``--fashion-dir``, ``$BENCH_HARNESS_FASHION_MNIST_DIR``, ``.fashion-mnist/``,
``/usr/share/datasets/fashion-mnist``), else learnable synthetic CIFAR-shaped data): the loader path, device data,
device data + bf16 + channels_last; achieved sparsity, masks still applied after training, top-1 equal within noise.

Goals (issue 30, on a GPU): harness epoch <= 1.2x the compute floor, >= 5x the plain loop's images/s, packed >= 3x
sequential. Figures are printed, and the goals reported, never asserted; the exit status is 1 only when the
correctness line fails. Expected output: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- data ----------------------------------------------------------------------------------------------------
def synthetic_images(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable CIFAR-shaped uint8 images (N, 32, 32, 3): a smooth random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = F.interpolate(torch.rand(classes, 3, 4, 4, generator=g), size=32, mode="bilinear")
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 8192):  # in chunks: bounded memory
        part = slice(start, min(n, start + 8192))
        noise = torch.rand(part.stop - start, 3, 32, 32, generator=g)
        images[part] = ((0.6 * prototypes[labels[part]] + 0.4 * noise) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous(), labels


def fashion_images(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST padded to 32x32 and repeated to 3 channels: uint8 (N, 32, 32, 3), labels."""
    from bench_harness_plugins.providers.datasets import read_idx

    prefix = "train" if split == "train" else "t10k"

    def find(name):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(folder / name)

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte")).long()
    images = F.pad(images, (2, 2, 2, 2)).unsqueeze(-1).expand(-1, 32, 32, 3).contiguous()
    return images, labels


def write_cifar10(root: Path, train: tuple, test: tuple) -> Path:
    """Images (N, 32, 32, 3) uint8 and labels as CIFAR-10's python pickles under root/cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, images, labels):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": images.permute(0, 3, 1, 2).reshape(len(images), -1).numpy(),
                         b"labels": [int(v) for v in labels]}, fh, protocol=4)

    images, labels = train
    for k, part in enumerate(torch.arange(len(images)).chunk(5), start=1):
        dump(f"data_batch_{k}", images[part], labels[part])
    dump("test_batch", *test)
    return root


def find_fashion(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("BENCH_HARNESS_FASHION_MNIST_DIR"), REPO / ".fashion-mnist",
                  "/usr/share/datasets/fashion-mnist"]
    for c in candidates:
        if c and list(Path(c).glob("t10k-labels-idx1-ubyte*")) and list(Path(c).glob("train-images-idx3-ubyte*")):
            return Path(c)
    return None


# -- models and masks ----------------------------------------------------------------------------------------
MODEL = "resnet20"  # --model


def new_model(device: torch.device, seed: int = 0):
    """The benchmark's model (ResNet-20 unless --model says otherwise), built by its registered plugin."""
    from bench_harness.contract.models import build_model
    from bench_harness.contract.plugins import get_registry

    torch.manual_seed(seed)
    return build_model(get_registry().get("model", MODEL), MODEL, 10, 3, 32, {}).to(device)


def random_masks(model, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    from bench_harness.contract import masking

    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in masking.prunable_parameters(model).items()}
    return {n: m.to(next(model.parameters()).device) for n, m in masking.topk_masks(scores, 1 - sparsity).items()}


# -- timing --------------------------------------------------------------------------------------------------
def timed_harness(model, loader, recipe, device, masks, epochs: int) -> float:
    """Seconds per timed epoch of running.training.train (the first epoch is a warm-up)."""
    from bench_harness.running.training import train

    marks = []

    def on_epoch(epoch, loss):
        sync(device)
        marks.append(time.perf_counter())

    train(model, loader, recipe, device, masks=masks, epochs=epochs, on_epoch=on_epoch)
    return (marks[-1] - marks[0]) / max(len(marks) - 1, 1)


def timed_plain(dataset, batch: int, workers: int, device, epochs: int) -> float:
    """Seconds per timed epoch of a plain PyTorch loop with a DataLoader."""
    from torch.utils.data import DataLoader

    model = new_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    marks = []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        marks.append(time.perf_counter())
    return (marks[-1] - marks[0]) / max(len(marks) - 1, 1)


def data_path_rates(train_set, test_set, recipe, device) -> tuple[float, float]:
    """Batches per second of the data alone (no model): the harness's DataLoader (0 workers, per-image
    transforms; one epoch) and the device-data loader (two epochs after a warm-up epoch)."""
    from bench_harness.contract.datasets import make_loader
    from bench_harness.running.device_data import device_loaders

    def rate(loader, epochs: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(epochs):
            for _ in loader:
                pass
        sync(device)
        return epochs * len(loader) / (time.perf_counter() - t0)

    loader_rate = rate(make_loader(train_set, recipe.batch_size, True, 0, 0, drop_last=True), 1)
    on_device = device_loaders(train_set, test_set, recipe, 0, device)[0]
    rate(on_device, 1)  # warm-up
    return loader_rate, rate(on_device, 2)


def timed_floor(device, batch: int, steps: int, bf16_channels_last: bool) -> float:
    """Seconds per step of forward + backward + SGD step on batches already on the device."""
    model = new_model(device)
    fmt = torch.channels_last if bf16_channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    xs = [torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), device=device) for _ in range(4)]

    def step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_channels_last):
            loss = F.cross_entropy(model(xs[i % 4]), ys[i % 4])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(max(3, steps // 5)):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return (time.perf_counter() - t0) / steps


def timed_packed(train_set, test_set, recipe, device, runs: int, epochs: int) -> float:
    """Seconds per timed epoch of ``runs`` runs trained as one packed computation on the shared device data."""
    from bench_harness.running.device_data import device_loaders
    from bench_harness.running.packing import train_packed

    group = []
    for seed in range(runs):
        model = new_model(device, seed)
        train, _ = device_loaders(train_set, test_set, recipe, seed, device)
        group.append(SimpleNamespace(device=device, run=SimpleNamespace(recipe=recipe, run_id=f"packed-{seed}"),
                                     model=model, masks=random_masks(model, 0.8, seed),
                                     data=SimpleNamespace(train=train),
                                     end=epochs, start=0, row={}))
    marks = []

    def on_epoch(phase, epoch, total, loss):
        sync(device)
        marks.append(time.perf_counter())

    train_packed(group, on_epoch)
    return (marks[-1] - marks[0]) / max(len(marks) - 1, 1)


# -- correctness ---------------------------------------------------------------------------------------------
CORRECTNESS_SUITE = """name: {name}
grid:
  models: [{model}]
  datasets: [cifar10]
  sparsities: [0.8]
  seeds: [0]
  pruners: [magnitude]
recipe: {{epochs: {epochs}, batch_size: {batch}, lr: 0.05, weight_decay: 5e-4, test_subset: {test_subset},
          train_subset: {train_subset}{extra}}}
device: {device}
data_root: {data_root}
results_root: {results_root}
"""


def correctness(data_root: Path, work: Path, args, device: torch.device) -> list[dict]:
    """One whole run per path through ``bench run``; their rows."""
    from bench_harness.results.store import load_results

    paths = [("loader", ", data_on_device: false"), ("device", ", data_on_device: true"),
             ("device_bf16_cl", ", data_on_device: true, precision: bf16, channels_last: true")]
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for name, extra in paths:
        suite = work / f"{name}.yaml"
        suite.write_text(CORRECTNESS_SUITE.format(
            name=name, model=MODEL, epochs=args.check_epochs, batch=args.batch, test_subset=args.check_test or "null",
            train_subset=args.check_train or "null", extra=extra, device=device, data_root=data_root,
            results_root=work / "results"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench_harness.cli", "run", str(suite), "--no-progress"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"bench run {suite.name} failed")
        row = load_results(work / "results", [name]).iloc[0].to_dict()
        row["wall"] = time.perf_counter() - t0
        row["path"] = name
        rows.append(row)
    return rows


# -- main ----------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end (any device)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed path (the first is a warm-up)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop")
    parser.add_argument("--packed", type=int, default=8)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the compiled path too (default: on a GPU)")
    parser.add_argument("--check-epochs", type=int, default=3)
    parser.add_argument("--check-train", type=int, default=None, help="training examples of the correctness runs")
    parser.add_argument("--check-test", type=int, default=None)
    parser.add_argument("--fashion-dir", default=None)
    parser.add_argument("--model", default=None, help="registered model name (default resnet20; smoke: lenet5)")
    parser.add_argument("--data-only", action="store_true", help="measure the data paths alone, then stop")
    args = parser.parse_args()
    if args.smoke:
        args.train_size, args.batch, args.epochs, args.packed = 256, 32, 2, 2
        args.check_epochs, args.check_train, args.check_test = 1, 256, 256
        args.workers = min(args.workers, 2)
    global MODEL
    MODEL = args.model or ("lenet5" if args.smoke else "resnet20")
    from bench_harness.api import make_recipe
    from bench_harness.contract.datasets import make_loader
    from bench_harness.contract.plugins import get_registry
    from bench_harness.running.device_data import device_loaders
    from bench_harness.running.provenance import device_name, resolve_device

    device = resolve_device(args.device)
    compile_too = device.type == "cuda" if args.compile is None else args.compile
    t_start = time.perf_counter()
    print(f"device: {device_name(device)}; torch {torch.__version__}; "
          f"{'SMOKE (tiny sizes: no figure to report)' if args.smoke else 'full'}"
          f"; {MODEL}, batch {args.batch}, {args.train_size} CIFAR-shaped uint8 images, {args.epochs} epochs per "
          f"path (the first a warm-up)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
        tmp = Path(tmp)
        throughput_root = write_cifar10(tmp / "synthetic", synthetic_images(args.train_size, 10, 0),
                                        synthetic_images(max(256, args.train_size // 10), 10, 1))
        spec = get_registry().get("dataset", "cifar10")
        train_set = spec.load(root=str(throughput_root), split="train", augment=True)
        test_set = spec.load(root=str(throughput_root), split="test", augment=False)
        steps = args.train_size // args.batch
        images = steps * args.batch
        results: list[tuple[str, float, str]] = []  # (path, seconds per epoch, note)

        def recipe(**kw):
            return make_recipe({"epochs": args.epochs, "batch_size": args.batch, "lr": 0.05, "weight_decay": 5e-4,
                                **kw})

        def harness(label, note="", **kw):
            r = recipe(**kw)
            model = new_model(device)
            masks = random_masks(model, 0.8, 0)
            loaders = device_loaders(train_set, test_set, r, 0, device)
            loader = loaders[0] if loaders else make_loader(train_set, args.batch, True, 0, r.num_workers,
                                                             drop_last=True)
            seconds = timed_harness(model, loader, r, device, masks, args.epochs)
            results.append((label, seconds, note))
            print(f"  {label}: {images / seconds:,.0f} images/s", flush=True)
            return seconds

        loader_rate, device_rate = data_path_rates(train_set, test_set, recipe(data_on_device=True), device)
        data_line = (f"data alone (batches of {args.batch}, crop + flip + normalise): DataLoader {loader_rate:,.1f} "
                     f"batches/s, data on device {device_rate:,.1f} batches/s: x{device_rate / loader_rate:.1f}")
        print(data_line, flush=True)
        if args.data_only:
            return 0
        print("throughput:", flush=True)
        plain = timed_plain(train_set, args.batch, args.workers, device, args.epochs)
        results.append((f"plain loop, DataLoader {args.workers} workers, fp32", plain, "reference"))
        print(f"  plain: {images / plain:,.0f} images/s", flush=True)
        harness("harness default (DataLoader, 0 workers), fp32", data_on_device=False)
        device_fp32 = harness("harness, data on device, fp32", data_on_device=True)
        device_bf16 = harness("harness, data on device, bf16", data_on_device=True, precision="bf16")
        best = harness("harness, data on device, bf16 + channels_last", data_on_device=True, precision="bf16",
                       channels_last=True)
        if compile_too:
            t0 = time.perf_counter()
            compiled = harness("harness, data on device, bf16 + channels_last + compile", data_on_device=True,
                               precision="bf16", channels_last=True, compile=True)
            results[-1] = (results[-1][0], compiled, f"whole call {time.perf_counter() - t0:.0f} s with compiling")
            best = min(best, compiled)
        packed = timed_packed(train_set, test_set, recipe(data_on_device=True, precision="bf16"), device, args.packed,
                              args.epochs)
        results.append((f"{args.packed} packed runs, data on device, bf16 (all runs)", packed / args.packed,
                        f"x{device_bf16 * args.packed / packed:.2f} of {args.packed} sequential"))
        print(f"  packed: {images * args.packed / packed:,.0f} images/s", flush=True)
        floor_steps = max(10, steps)
        floor32 = timed_floor(device, args.batch, floor_steps, False) * steps
        floor16 = timed_floor(device, args.batch, floor_steps, True) * steps
        results.append(("compute floor, fp32 (fwd+bwd+step on device batches)", floor32, "floor"))
        results.append(("compute floor, bf16 + channels_last", floor16, "floor"))

        fashion = find_fashion(args.fashion_dir)
        if fashion is not None:
            check_root = write_cifar10(tmp / "fashion", fashion_images(fashion, "train"),
                                       fashion_images(fashion, "test"))
            check_data = f"Fashion-MNIST padded to 32x32x3 ({fashion})"
        else:
            n = args.check_train or 20_000
            check_root = write_cifar10(tmp / "check", synthetic_images(n, 10, 2), synthetic_images(2_000, 10, 3))
            check_data = "synthetic CIFAR-shaped (Fashion-MNIST not found)"
        print(f"correctness runs on {check_data}:", flush=True)
        rows = correctness(check_root, tmp / "runs", args, device)

    print()
    print(f"{'path':<62} {'images/s':>11} {'epoch s':>9} {'x plain':>8}  note")
    for label, seconds, note in results:
        per_run_images = images
        print(f"{label:<62} {per_run_images / seconds:>11,.0f} {seconds:>9.3f} {plain / seconds:>8.2f}  {note}")
    print(data_line)
    print()
    ratio_floor = best / floor16
    goals = [("harness epoch <= 1.2x compute floor (bf16 + channels_last)", f"{ratio_floor:.2f}x", ratio_floor <= 1.2),
             ("harness epoch <= 1.2x compute floor (fp32)", f"{device_fp32 / floor32:.2f}x",
              device_fp32 / floor32 <= 1.2),
             ("harness images/s >= 5x plain loop", f"{plain / best:.2f}x", plain / best >= 5),
             (f"{args.packed} packed >= 3x sequential", f"{device_bf16 * args.packed / packed:.2f}x",
              device_bf16 * args.packed / packed >= 3)]
    where = "" if device.type == "cuda" else "  (goals are for a GPU: not judged here)"
    print(f"goals (issue 30){where}:")
    for text, value, ok in goals:
        print(f"  {text:<58} {value:>8}  {('met' if ok else 'NOT met') if device.type == 'cuda' else '-'}")
    print()
    print(f"correctness ({check_data}; {MODEL}, magnitude at 0.8, {args.check_epochs} epochs):")
    base = rows[0]
    n_test = args.check_test or 10_000
    failed = False
    for row in rows:
        masks_kept = abs(row["achieved_sparsity"] - 0.8) < 0.005
        p = max(min(base["top1"], 1 - 1e-3), 1e-3)
        tol = max(0.02, 4 * math.sqrt(2 * p * (1 - p) / n_test))  # two runs' binomial noise, and seed noise
        same = abs(row["top1"] - base["top1"]) <= tol
        ok = row["status"] == "ok" and masks_kept and same
        failed |= not ok
        print(f"  {row['path']:<16} status {row['status']}, top1 {row['top1']:.4f} "
              f"(vs loader {row['top1'] - base['top1']:+.4f}, "
              f"tolerance {tol:.3f}), achieved sparsity {row['achieved_sparsity']:.4f}, masks applied: "
              f"{'yes' if masks_kept else 'NO'}, data_on_device {row.get('data_on_device')}, precision "
              f"{row.get('precision')}, channels_last {row.get('channels_last')}, train {row['train_seconds']:.1f} s"
              f"  {'ok' if ok else 'FAILED'}")
    print(f"correctness: {'FAILED' if failed else 'ok'}; total {time.perf_counter() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
