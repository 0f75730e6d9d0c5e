"""Generate tests/fixtures/wanda/official.pt: masks of the official Wanda code (locuslab/wanda) on tiny stand-ins.

    PYTHONPATH=.:.pypath .venv/bin/python scripts/wanda_official_fixtures.py /path/to/wanda-checkout
                                                                            [--out tests/fixtures/wanda]

The argument is a checkout (or an exported tree, e.g. ``git archive 8e8fc87 | tar -x -C /tmp/wanda``) of
locuslab/wanda OUTSIDE the project; nothing of it is copied into the project. The script imports its modules
and runs its own pruning functions unchanged:

- ``lib/prune.py`` ``prune_wanda`` (with ``lib/layerwrapper.py`` ``WrappedGPT``: the ``scaler_row`` of
  ``add_batch``, the stable sort per output row, the ``prune_n``/``prune_m`` loop, the ``use_variant`` search
  (``return_given_alpha``); the block-by-block walk that
  feeds each decoder layer the output of the pruned previous one) on :class:`StandInLM` (tests/test_wanda.py), a
  stand-in for the Hugging Face LLaMA it expects (``model.model.layers``, ``config``, ``seqlen``,
  ``hf_device_map``). Its calibration loader ``get_loaders("c4", ...)`` is replaced by our stored hidden states
  (one sequence per sample, as C4 gives); ``lib/data.py`` and ``lib/sparsegpt.py`` import ``datasets`` and
  ``transformers`` at the top for code not run here, so those two names are empty stand-in modules.
- ``image_classifiers/prune_utils.py`` ``prune_vit`` (with ``image_classifiers/layerwrapper.py``
  ``WrappedLayer``), ``prune_granularity="row"``, on :class:`StandInViT`: every block's statistics are collected
  before that block is pruned, on inputs computed by the unpruned earlier blocks (our ``calibration: dense``).

The fixture holds the stand-ins' weights (float32, seeded here), the calibration inputs, and for each case the
official kept masks (True = kept: the weights the official code left non-zero; no weight is zero before).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_wanda import StandInLM, StandInViT, block_weights  # noqa: E402

LM_CASES = {  # name -> (sparsity_ratio, prune_n, prune_m, use_variant), as main.py passes them
    "unstructured_0.5": (0.5, 0, 0, False),
    "unstructured_0.3": (0.3, 0, 0, False),  # int(cols * 0.3) is not an integer count: the official floor per row
    "nm_2_4": (0.5, 2, 4, False),
    "nm_4_8": (0.5, 4, 8, False),
    "variant_0.5": (0.5, 0, 0, True),  # the appendix's variant (--use_variant)
    "variant_0.7": (0.7, 0, 0, True),
}
VIT_CASES = {"row_0.5": 0.5, "row_0.7": 0.7}


def _inputs(n: int, rows: int, features: int, seed: int) -> torch.Tensor:
    """Gaussian inputs with a log-normal scale per feature, so that the input norms change the ranking."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(features, generator=g))
    return torch.randn(n, rows, features, generator=g) * scale


def _kept(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach() != 0 for n in names}


def lm_cases(official: Path) -> dict:
    sys.path.insert(0, str(official))
    for stub in ("datasets", "transformers"):  # imported at the top of lib/data.py, lib/sparsegpt.py; not used here
        if stub not in sys.modules:
            module = types.ModuleType(stub)
            module.load_dataset = None
            sys.modules[stub] = module
    import lib.prune as official_prune

    torch.manual_seed(0)
    reference = StandInLM()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    inputs = _inputs(16, reference.seqlen, reference.config.hidden_size, seed=1)
    names = block_weights(reference, "model.layers")
    cases = {}
    for case, (ratio, prune_n, prune_m, use_variant) in LM_CASES.items():
        model = StandInLM()
        model.load_state_dict(state)
        assert all(bool((p != 0).all()) for p in model.parameters())
        loader = [(inputs[i:i + 1], None) for i in range(len(inputs))]
        official_prune.get_loaders = lambda *a, loader=loader, **k: (loader, None)
        args = types.SimpleNamespace(nsamples=len(inputs), seed=0, sparsity_ratio=ratio, use_variant=use_variant)
        official_prune.prune_wanda(args, model, None, device=torch.device("cpu"), prune_n=prune_n, prune_m=prune_m)
        cases[case] = {"sparsity": ratio, "prune_n": prune_n, "prune_m": prune_m, "use_variant": use_variant,
                       "masks": _kept(model, names)}
    return {"state_dict": state, "inputs": inputs, "names": names, "cases": cases}


def vit_cases(official: Path) -> dict:
    sys.path.insert(0, str(official / "image_classifiers"))
    import prune_utils

    torch.manual_seed(2)
    reference = StandInViT()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    inputs = _inputs(16, 6, 12, seed=3)
    names = block_weights(reference, "blocks")
    cases = {}
    for case, ratio in VIT_CASES.items():
        model = StandInViT()
        model.load_state_dict(state)
        args = types.SimpleNamespace(prune_metric="wanda", prune_granularity="row", sparsity=ratio)
        with torch.no_grad():
            prune_utils.prune_vit(args, model, inputs.clone(), torch.device("cpu"))
        cases[case] = {"sparsity": ratio, "masks": _kept(model, names)}
    return {"state_dict": state, "inputs": inputs, "names": names, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", type=Path, help="a locuslab/wanda tree outside the project")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "wanda")
    args = parser.parse_args()
    official = args.official.resolve()
    if ROOT in official.parents or official == ROOT:
        raise SystemExit("run the official code outside the project tree")
    try:
        commit = subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "8e8fc87b4a2f9955baa7e76e64d5fce7fa8724a6 (exported tree; pass a checkout to record its commit)"
    torch.set_num_threads(1)
    payload = {"official_commit": commit, "torch": torch.__version__, "lm": lm_cases(official),
               "vit": vit_cases(official)}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(payload, args.out / "official.pt")
    for part in ("lm", "vit"):
        for case, c in payload[part]["cases"].items():
            kept = sum(int(m.sum()) for m in c["masks"].values())
            total = sum(m.numel() for m in c["masks"].values())
            print(f"{part} {case}: density {kept / total:.4f}")
    print(f"wrote {args.out / 'official.pt'}")


if __name__ == "__main__":
    main()
