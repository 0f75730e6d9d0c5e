"""Cost and sparsity metrics of a pruned model; the metric-plugin contract."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench_harness.contract import masking

_TORCH_BEFORE_2_4 = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4)


def flops_per_example(model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor],
                      device: torch.device) -> tuple[float, float]:
    """(dense, effective) FLOPs of one example, counted by torch's own flop counter.

    Effective FLOPs scale each masked layer's count by the layer's density (a sparse kernel skips the
    multiply-adds of pruned weights).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    # torch < 2.4 tracks modules only when given the model (later versions track every module and deprecate it)
    counter = FlopCounterMode(model, display=False) if _TORCH_BEFORE_2_4 else FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    dense = float(counter.get_total_flops())
    per_module = counter.get_flop_counts()
    densities = masking.layer_densities(masks)
    saved = 0.0
    for name, density in densities.items():
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        # the counter names modules "<RootClass>.<qualified name>"
        key = f"{type(model).__name__}.{module_name}" if module_name else type(model).__name__
        counts = per_module.get(key)
        if counts:
            saved += float(sum(counts.values())) * (1.0 - density)
    return dense, dense - saved


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:
        return 0
