"""Generate tests/fixtures/px/: masks of the official PX codes on our own seeds and images.

    .venv/bin/python scripts/px_official_fixtures.py /path/to/px-ntk-pruning [--out tests/fixtures/px]
                                                     [--only CASE ...] [--images-from DIR]

The argument is a git checkout (or bare clone) of iurada/px-ntk-pruning. The two official commits are exported
with ``git archive`` into a temporary folder outside the project and run there, each in its own Python process,
importing only the official modules (its pruners, layers and models; not its training entry point). Nothing of
the official code is copied into the project: the fixtures hold our images (uint8), the seeds that build our
models, a checksum of those initial weights, and the official masks (bit-packed, compressed; for the VGGs only
at a fixed pseudo-random 1/16 of the positions, ``sample_positions``, to keep the fixtures small) with the
official per-layer kept counts.

For each case the script:
1. builds the model the test builds (bench-harness ResNet-20 / VGG-16-bn, or the test's plain VGG), seeded;
2. copies its weights into the official model (state entries matched in order and shape; the official masks and
   identity-shortcut scalars are skipped);
3. runs the official prune loop (``train_classification.py``'s: ``model.eval()``, R rounds, density
   ``d ** (r / R)``, ``pruner.score`` then ``pruner.mask(·, 'global')``) and saves the masks;
4. runs the bench-harness pruner on the same weights and images and prints the IoU (the test asserts it).

Images: the first k Fashion-MNIST training images of each class (Debian's dataset-fashion-mnist, or
``--images-from``), 28x28 uint8, grouped by class; the test turns them into 3x32x32 inputs (``fixture_inputs``).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITS = {"april": "82ce2bf", "head": "ed6c40e"}
FASHION = Path(os.environ.get("BENCH_HARNESS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


# ----------------------------------------------------------------------------------------------- official side
def _official_worker(spec: dict) -> None:
    """Runs inside an exported official tree (cwd), in its own process."""
    import numpy as np
    import torch

    sys.path.insert(0, os.getcwd())
    torch.set_num_threads(spec["threads"])
    import lib.layers as layers
    import lib.pruners as pruners
    from globals import CONFIG  # the official global config
    from lib.generator import masked_parameters

    CONFIG.device = "cpu"
    CONFIG.dataset = "CIFAR10"  # the data branch the official PX takes for (data, label) batches
    CONFIG.num_classes = spec["num_classes"]
    CONFIG.batch_size = spec["batch_size"]
    CONFIG.experiment_args = {"batch_limit": spec.get("batch_limit", 1),
                              "examples_per_class": spec.get("examples_per_class", 1),
                              "aux_model": spec.get("aux_model")}
    if spec["arch"] == "resnet20":
        from lib.models.lottery_resnet import resnet20 as build
    else:
        import lib.models.lottery_vgg as vgg
        build = getattr(vgg, spec["arch"])
    model = build(num_classes=spec["num_classes"])
    # our initial weights, in order, into the official state (masks and identity-shortcut scalars skipped)
    ours = torch.load(spec["weights"])
    skip = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (layers.Identity1d, layers.Identity2d))}
    targets = [(k, v) for k, v in model.state_dict().items() if not k.endswith("_mask") and k not in skip]
    if len(targets) != len(ours):
        raise SystemExit(f"state entries: official {len(targets)}, ours {len(ours)}")
    with torch.no_grad():
        for (k, v), w in zip(targets, ours):
            if v.shape != w.shape:
                raise SystemExit(f"shape mismatch: official {k} {tuple(v.shape)} vs ours {tuple(w.shape)}")
            v.copy_(w)
    data = torch.load(spec["data"])
    x, y = data["x"], data["y"]

    class Images(torch.utils.data.TensorDataset):
        targets = [int(v) for v in y]

    dataset = Images(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec["batch_size"], shuffle=False)
    pruner = pruners.PX(masked_parameters(model))
    model.eval()  # train_classification.py does this for PX before the rounds
    t0 = time.perf_counter()
    rounds, density = spec["rounds"], spec["density"]
    for r in range(rounds):  # the official prune loop (train_classification.py)
        pruner.score(model, None, loader, "cpu")
        if r == 0:
            scores1 = [pruner.scores[id(p)].clone() for _, p in pruner.masked_parameters]
        pruner.mask(density ** ((r + 1) / rounds), "global")
    seconds = time.perf_counter() - t0
    masks = [m.detach().bool().numpy() for m, _ in pruner.masked_parameters]
    np.savez(spec["out"], seconds=seconds, *masks)
    torch.save(scores1, spec["out"] + ".scores1.pt")


def export_official(checkout: Path, dest: Path) -> dict[str, Path]:
    out = {}
    for key, commit in COMMITS.items():
        target = dest / commit
        if not (target / "lib" / "pruners.py").exists():
            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(checkout), "archive", commit], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        out[key] = target
    return out


def run_official(tree: Path, spec: dict) -> tuple[list, float, list]:
    import numpy as np
    import torch

    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], cwd=tree,
                   env=env, check=True)
    with np.load(spec["out"]) as f:
        seconds = float(f["seconds"])
        masks = [f[f"arr_{i}"] for i in range(len(f.files) - 1)]
    return masks, seconds, torch.load(spec["out"] + ".scores1.pt")


# --------------------------------------------------------------------------------------------------- our side
def fashion_first_per_class(k: int, source: Path):
    import numpy as np

    with gzip.open(source / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(source / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    chosen: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        picked = chosen.setdefault(int(label), [])
        if len(picked) < k:
            picked.append(i)
        if len(chosen) == 10 and all(len(v) == k for v in chosen.values()):
            break
    order = [i for indices in chosen.values() for i in indices]  # grouped by class, first-appearance order
    return images[order].copy(), labels[order].astype(np.int64)


# Larger comparisons for docs/px.md (``--check``): 100 images (10 per class), one batch, as in the check.
CHECK_CASES = {
    f"{code}_{model}_d{d}": dict(code=code, pruner="px_cvpr2024" if code == "april" else "px_head", model=model,
                                 seed=21, density=d, rounds=rounds, examples_per_class=10)
    for code, model, rounds in [("april", "resnet20", 100), ("april", "vgg16_bn", 20), ("head", "vgg11", 100),
                                ("head", "resnet20", 100), ("head", "vgg16_bn", 20), ("head", "vgg16", 20)]
    for d in (0.1, 0.018)
}


def compare_case(T, case: dict, images, labels, trees: dict, work: Path, threads: int, float64: bool = False) -> dict:
    """Run the official code and ours on the same seeded weights and images; IoU of the final masks."""
    import warnings

    import torch

    import bench_harness

    model = T.fixture_model(case["model"], case["seed"])
    checksum = T.init_checksum(model)
    x, y = T.fixture_inputs(images, labels, case["examples_per_class"])
    work.mkdir(parents=True, exist_ok=True)
    torch.save([v.clone() for v in model.state_dict().values()], work / "weights.pt")
    torch.save({"x": x, "y": y}, work / "data.pt")
    spec = {"arch": T.OFFICIAL_ARCH[case["model"]], "num_classes": 10, "batch_size": len(x),
            "rounds": case["rounds"], "density": case["density"], "threads": threads,
            "weights": str(work / "weights.pt"), "data": str(work / "data.pt"), "out": str(work / "official.npz"),
            "batch_limit": 1, "examples_per_class": case["examples_per_class"],
            "aux_model": T.OFFICIAL_AUX.get(case["model"])}
    official, official_s, _ = run_official(trees[case["code"]], spec)
    reference = T.fixture_model(case["model"], case["seed"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = T.run_case(case, model, x, y, check_numerics=True)
    ours_s = time.perf_counter() - t0
    names = list(ours)
    if [tuple(ours[n].shape) for n in names] != [m.shape for m in official]:
        raise SystemExit("the official prunable weights do not line up with ours")
    theirs = {n: torch.from_numpy(m) for n, m in zip(names, official)}
    out = {"official": official, "ours": ours, "iou": T.mask_iou(ours, theirs), "checksum": checksum,
           "official_s": official_s, "ours_s": ours_s,
           "official_kept": int(sum(m.sum() for m in official)), "total": int(sum(m.size for m in official)),
           "warnings": [w.message for w in caught if issubclass(w.category, bench_harness.DegenerateScoresWarning)]}
    if float64:  # the same pruner on a float64 copy: does the final mask depend on the arithmetic?
        ours64 = T.run_case(case, reference.double(), x.double(), y)
        out["iou_f32_f64"] = T.mask_iou(ours, ours64)
    return out


def check(args, T, trees) -> None:
    images, labels = fashion_first_per_class(10, args.images_from)
    print("| case | IoU vs official | official kept | round-1 health check | "
          "final f32 vs f64 IoU | official s | ours s |")
    print("|---|---|---|---|---|---|---|")
    for name, case in CHECK_CASES.items():
        if args.only and name not in args.only:
            continue
        r = compare_case(T, case, images, labels, trees, args.work / ("check_" + name), args.threads,
                         float64=not args.no_float64)
        health = "; ".join(f"warns (IoU {w.iou:.3f}{', non-finite' if w.nonfinite else ''})" if w.iou is not None
                           else "warns (non-finite)" for w in r["warnings"]) or "healthy"
        print(f"| {name} | {r['iou']:.4f} | {r['official_kept']}/{r['total']} | {health} | "
              f"{r.get('iou_f32_f64', float('nan')):.4f} | {r['official_s']:.1f} | {r['ours_s']:.1f} |", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _official_worker(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", type=Path, help="git checkout of iurada/px-ntk-pruning")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "px")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "px-official-fixtures")
    parser.add_argument("--only", nargs="*", help="case names to (re)generate or check")
    parser.add_argument("--images-from", type=Path, default=FASHION)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both codes (the fixtures: 1)")
    parser.add_argument("--check", action="store_true", help="compare on CHECK_CASES (100 images) and print a "
                                                            "table; writes no fixtures")
    parser.add_argument("--no-float64", action="store_true", help="--check: skip the float64 rerun of ours")
    args = parser.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from tests import test_px as T  # the cases, models and input transform the test uses

    torch.set_num_threads(args.threads)
    trees = export_official(args.checkout.resolve(), args.work)
    if args.check:
        check(args, T, trees)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "cases.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"cases": {}}
    k_max = max(c["examples_per_class"] for c in T.FIDELITY_CASES.values())
    images, labels = fashion_first_per_class(k_max, args.images_from)
    np.savez_compressed(args.out / "images.npz", images=images, labels=labels)
    masks_path = args.out / "masks.npz"
    stored = dict(np.load(masks_path)) if masks_path.exists() else {}
    for name, case in T.FIDELITY_CASES.items():
        if args.only and name not in args.only:
            continue
        r = compare_case(T, case, images, labels, trees, args.work / name, args.threads)
        flat = np.concatenate([m.reshape(-1) for m in r["official"]])
        positions = T.sample_positions(flat.size, case.get("sample", 1.0))
        stored[name] = np.packbits(flat[positions])
        stored[name + ".layer_kept"] = np.array([int(m.sum()) for m in r["official"]], dtype=np.int64)
        manifest["cases"][name] = {**case, "init_checksum": r["checksum"], "official_commit": COMMITS[case["code"]],
                                   "kept": int(flat.sum()), "total": int(flat.size),
                                   "stored_positions": int(positions.size), "threads": args.threads,
                                   "arithmetic": T.arithmetic(),
                                   "iou_at_generation": round(r["iou"], 6),
                                   "official_seconds": round(r["official_s"], 2), "ours_seconds": round(r["ours_s"], 2)}
        print(f"{name}: IoU {r['iou']:.4f}  official {r['official_s']:.1f} s, ours {r['ours_s']:.1f} s", flush=True)
    np.savez_compressed(masks_path, **stored)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
