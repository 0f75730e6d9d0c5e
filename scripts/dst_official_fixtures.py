"""Generate tests/fixtures/dst/jaxpruner.json: outputs of JaxPruner (google-research/jaxpruner) on our own inputs.

    /tmp/dst-venv/bin/python scripts/dst_official_fixtures.py /path/to/jaxpruner [--commit SHA]
                                                             [--out tests/fixtures/dst/jaxpruner.json]

Run it with a Python that has jax, optax, flax, chex and ml-collections (a throwaway venv outside the project:
``python3 -m venv /tmp/dst-venv && /tmp/dst-venv/bin/pip install "jax[cpu]" optax flax chex ml-collections``); it
needs neither torch nor the harness. The argument is a git checkout (or bare clone) of google-research/jaxpruner;
the commit is exported with ``git archive`` into a temporary folder outside the project and imported from there.
Nothing of it is copied into the project: the fixture holds our inputs and JaxPruner's outputs.

JaxPruner predates the removal of ``jax.tree_map`` (jax 0.6); the script aliases it to ``jax.tree_util.tree_map``
before importing JaxPruner (the same function). What it records:

1. ``polynomial``: ``PolynomialSchedule(update_freq, update_start_step, update_end_step).get_sparsity_at_step``
   and ``is_mask_update_iter`` at chosen counts (JaxPruner's GMP schedule);
2. ``cosine``: ``optax.cosine_decay_schedule(drop_fraction, update_end_step)``, the drop fraction ``api.py``
   gives SET and RigL;
3. ``erk``: ``sparsity_distributions.erk`` per-layer sparsities for LeNet-5's and ResNet-20's weight shapes, and
   the kept counts of its top-k (``round(N (1 - s))``);
4. ``drop_grow``: one ``_update_masks`` of ``RigL`` (grow by |grad|) on given weights, gradients and mask, with
   ties among the drop scores (JaxPruner breaks them by position; no noise).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "f133ee50f31a03d0152b8b272edb534065152f5d"

LENET5 = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "fc1": (120, 400), "fc2": (84, 120), "fc3": (10, 84)}
RESNET20_TAIL = {"conv": (16, 3, 3, 3), "l1": (16, 16, 3, 3), "l2": (32, 16, 3, 3), "l2b": (32, 32, 3, 3),
                 "l3": (64, 32, 3, 3), "l3b": (64, 64, 3, 3), "fc": (10, 64)}


def drop_grow_case():
    """A 6x8 layer: 24 active entries (every other one), distinct |w| except a tie at the drop boundary, gradients
    largest on two just-dropped entries (they regrow) and on inactive ones."""
    n = 48
    mask = [1 if i % 2 == 0 else 0 for i in range(n)]
    # active weights: magnitudes 0.05, 0.10, ... with one tie (entries 10 and 12 both 0.3 in magnitude)
    weights = []
    for i in range(n):
        if mask[i]:
            k = i // 2
            weights.append(round((k + 1) * 0.05 * (-1) ** k, 4))
        else:
            weights.append(0.0)
    weights[10] = 0.3
    weights[12] = -0.3  # |w| tie with entry 10
    grads = [round(((i * 37) % 48) / 48.0 - 0.5, 5) for i in range(n)]
    grads[0] = 3.0  # entry 0 has the smallest |w| and is dropped first: it regrows
    grads[2] = -2.5
    return {"shape": [6, 8], "weights": weights, "grads": grads, "mask": mask, "drop_fraction": 0.25}


def run(jaxpruner_root: Path) -> dict:
    sys.path.insert(0, str(jaxpruner_root))
    import jax
    import jax.numpy as jnp
    import numpy as np

    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree_util.tree_map
    import optax
    from jaxpruner import sparsity_distributions, sparsity_schedules
    from jaxpruner.algorithms import sparse_trainers

    out: dict = {"jaxpruner_commit": COMMIT, "jax": jax.__version__, "optax": optax.__version__}

    sched = sparsity_schedules.PolynomialSchedule(update_freq=10, update_start_step=20, update_end_step=120)
    counts = [0, 19, 20, 21, 29, 30, 70, 119, 120, 130, 200]
    out["polynomial"] = {
        "update_freq": 10, "update_start_step": 20, "update_end_step": 120, "target": 0.9, "power": 3,
        "counts": counts,
        "sparsity": [float(sched.get_sparsity_at_step(0.9, c)) for c in counts],
        "is_update": [bool(sched.is_mask_update_iter(c)) for c in counts],
    }

    cos = optax.cosine_decay_schedule(0.3, 75)
    counts = [0, 1, 10, 37, 50, 74, 75, 100]
    out["cosine"] = {"drop_fraction": 0.3, "update_end_step": 75, "counts": counts,
                     "drop": [float(cos(c)) for c in counts]}

    erk = {}
    for model, shapes in (("lenet5", LENET5), ("resnet20_subset", RESNET20_TAIL)):
        params = {n: jnp.zeros(s) for n, s in shapes.items()}
        for sparsity in (0.5, 0.9, 0.98):
            sp = sparsity_distributions.erk(params, sparsity)
            updater = sparse_trainers.StaticRandomSparse(rng_seed=jax.random.PRNGKey(0))
            masks = updater.get_initial_masks(params, sp)
            erk[f"{model}@{sparsity}"] = {
                "shapes": {n: list(s) for n, s in shapes.items()}, "sparsity": sparsity,
                "layer_sparsity": {n: float(sp[n]) for n in shapes},
                "kept": {n: int(np.asarray(masks[n]).sum()) for n in shapes},
            }
    out["erk"] = erk

    case = drop_grow_case()
    shape = tuple(case["shape"])
    w = jnp.asarray(np.array(case["weights"], dtype=np.float32).reshape(shape))
    g = jnp.asarray(np.array(case["grads"], dtype=np.float32).reshape(shape))
    m = jnp.asarray(np.array(case["mask"], dtype=np.uint8).reshape(shape))
    rigl = sparse_trainers.RigL(rng_seed=jax.random.PRNGKey(0))
    new = rigl._update_masks(m, jnp.abs(w), jnp.abs(g), case["drop_fraction"])
    case["rigl_new_mask"] = [int(v) for v in np.asarray(new).reshape(-1)]
    out["drop_grow"] = case
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path, help="a git checkout or bare clone of google-research/jaxpruner")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "dst" / "jaxpruner.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxpruner-") as tmp:
        archive = subprocess.run(["git", "-C", str(args.repo), "archive", args.commit, "jaxpruner"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "x", "-C", tmp], input=archive, check=True)
        result = run(Path(tmp))
    result["jaxpruner_commit"] = args.commit
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
