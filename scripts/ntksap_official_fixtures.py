"""Generate tests/fixtures/ntksap/: scores and masks of the official NTK-SAP code on two tiny networks.

    .venv/bin/python scripts/ntksap_official_fixtures.py /path/to/NTK-SAP [--out tests/fixtures/ntksap]

The argument is a git checkout (or bare clone) of YiteWang/NTK-SAP; commit e23682b is exported with
``git archive`` into a temporary folder outside the project and imported from there (its ``Layers``, ``Pruners``
and ``prune`` modules only; not its training entry point, which needs torchvision and data sets). Nothing of the
official code is copied into the project: the fixtures hold the seeds, the initial state of our two networks,
and what the official code computed.

The networks are ``nn.Sequential`` stacks of the official masked layers (``Layers.layers``), written here with an
``_initialize_weights`` that is the official lottery models' (Kaiming-normal Conv/Linear weights, BatchNorm 1/0,
biases untouched): the NTK-SAP score calls it at every iteration. The test builds the same stacks from plain
``torch.nn`` layers (same state names, without the masks).

For each case the script records:
1. ``init``: the network's initial state (without masks); the biases matter (the score never re-draws them);
2. ``one``: one official scoring iteration (R = 1, one batch): the re-drawn weights θ, the random input x and
   the perturbed weights θ' that the official code used (captured by forward pre-hooks), and its score
   |∂/∂m ...|; the test feeds the same tensors to our function;
3. ``rounds``: the official ``prune_loop`` (exponential schedule, global mask, ``train_mode=True`` as the official
   script) from ``torch.manual_seed(prune_seed)``: the scores of every round and the masks after it. The data
   loader is a plain list of zero batches (only the shapes are read), so that no sampler consumes random numbers:
   the draws are then the weights, input and perturbations, in the order our pruner draws them from a generator
   seeded alike.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "e23682b"

CASES = {
    # LeNet-300-100-like MLP (biases on), 3 rounds, 2 samplings, one batch of 6
    "mlp": {"kind": "mlp", "input": [1, 6, 6], "classes": 4, "rounds": 3, "samples": 2, "epsilon": 0.01,
            "batches": [6], "density": 0.2, "model_seed": 1, "prune_seed": 7},
    # conv net with BatchNorm (conv biases off), 2 rounds, 1 sampling, two batches (8 and 5): 13 examples, batch 8
    "conv": {"kind": "conv", "input": [3, 6, 6], "classes": 5, "rounds": 2, "samples": 1, "epsilon": 0.01,
             "batches": [8, 5], "density": 0.3, "model_seed": 2, "prune_seed": 11},
}


def _build(case, layers, nn, torch):
    if case["kind"] == "mlp":
        c, h, w = case["input"]
        mods = [nn.Flatten(), layers.Linear(c * h * w, 12), nn.ReLU(), layers.Linear(12, 8), nn.ReLU(),
                layers.Linear(8, case["classes"])]
    else:
        c = case["input"][0]
        mods = [layers.Conv2d(c, 4, 3, padding=1, bias=False), layers.BatchNorm2d(4), nn.ReLU(),
                layers.Conv2d(4, 6, 3, padding=1, bias=False), layers.BatchNorm2d(6), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), layers.Linear(6, case["classes"])]

    class Net(nn.Sequential):
        def _initialize_weights(self):  # the official lottery models' initialisation
            for m in self.modules():
                if isinstance(m, (layers.Linear, nn.Linear, layers.Conv2d)):
                    nn.init.kaiming_normal_(m.weight)
                elif isinstance(m, layers.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return Net(*mods)


def official(tree: Path, out: Path) -> None:
    import torch
    from torch import nn

    sys.path.insert(0, str(tree))
    from Layers import layers
    from prune import prune_loop
    from Pruners.pruners import NTKSAP
    from Utils import generator

    torch.set_num_threads(1)
    for name, case in CASES.items():
        torch.manual_seed(case["model_seed"])
        model = _build(case, layers, nn, torch)
        init = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_mask")}
        loader = [(torch.zeros(b, *case["input"]), torch.zeros(b, dtype=torch.long)) for b in case["batches"]]

        # 2. one iteration, with the tensors it used
        calls: list[dict] = []

        def pre_hook(module, args):
            calls[-1]["w"].append(module.weight.detach().clone())

        def first_hook(module, args):
            calls.append({"x": args[0].detach().clone(), "w": []})

        hooks = [model[0].register_forward_pre_hook(first_hook)]
        hooks += [m.register_forward_pre_hook(pre_hook) for m in model.modules()
                  if isinstance(m, (layers.Linear, layers.Conv2d))]
        torch.manual_seed(case["prune_seed"])
        pruner = NTKSAP(generator.masked_parameters(model), ntksap_epsilon=case["epsilon"], ntksap_R=1)
        model.train()
        pruner.score(model, None, loader[:1], "cpu")
        for h in hooks:
            h.remove()
        assert len(calls) == 3, len(calls)  # train-mode statistics pass, eval pass, perturbed pass
        wnames = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (layers.Linear, layers.Conv2d))]
        one = {"x": calls[1]["x"], "weights": dict(zip(wnames, calls[1]["w"])),
               "perturbed": dict(zip(wnames, calls[2]["w"])),
               "stats_pass_weights_equal": all(torch.equal(a, b) for a, b in zip(calls[0]["w"], calls[1]["w"])),
               "scores": {n: pruner.scores[id(p)].clone() for n, p in zip(wnames, [p for _, p in
                                                                                  pruner.masked_parameters])}}

        # 3. the official prune loop from the initial state
        torch.manual_seed(case["model_seed"])
        model = _build(case, layers, nn, torch)
        torch.manual_seed(case["prune_seed"])
        pruner = NTKSAP(generator.masked_parameters(model), ntksap_epsilon=case["epsilon"],
                        ntksap_R=case["samples"])
        rounds: list[dict] = []
        params = [p for _, p in pruner.masked_parameters]
        original_mask = pruner.mask

        def recording_mask(density, scope):
            scores = {n: pruner.scores[id(p)].clone() for n, p in zip(wnames, params)}
            original_mask(density, scope)
            rounds.append({"density": density, "scores": scores,
                           "masks": {n: m.detach().clone().bool() for n, (m, _) in
                                     zip(wnames, pruner.masked_parameters)}})

        pruner.mask = recording_mask
        prune_loop(model, None, pruner, loader, "cpu", case["density"], "exponential", "global", case["rounds"],
                   train_mode=True)
        torch.save({"case": case, "weight_names": wnames, "init": init, "one": one, "rounds": rounds},
                   out / f"{name}.pt")
        kept = int(sum(m.sum() for m in rounds[-1]["masks"].values()))
        total = sum(m.numel() for m in rounds[-1]["masks"].values())
        print(f"{name}: {len(rounds)} rounds, kept {kept}/{total}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", type=Path, help="git checkout or bare clone of YiteWang/NTK-SAP")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "ntksap")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--tree", type=Path, help="(internal) an exported official tree to run in this process")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tree is not None:
        official(args.tree, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="ntksap-official-") as tmp:
        archive = subprocess.run(["git", "--git-dir" if (args.official / "HEAD").exists() else "-C",
                                  str(args.official), "archive", args.commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        (Path(tmp) / "commit.json").write_text(json.dumps({"commit": args.commit}))
        # a separate process, run from the exported tree (its modules import each other by top-level name)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(args.official), "--out",
                        str(args.out.resolve()), "--commit", args.commit, "--tree", tmp], check=True, cwd=tmp)


if __name__ == "__main__":
    main()
