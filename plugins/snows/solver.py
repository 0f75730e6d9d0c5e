"""The pure mathematics of the post-training pruners (``mp``, ``mp_ls``, ``snows``, ``sparsegpt``): no model, no
harness. Every function here is tested on its own in ``tests/test_snows.py``.

- :func:`capped_magnitude_counts`: how many weights each layer loses under a global magnitude threshold with a
  per-layer cap (the official SNOWS mask);
- :func:`nm_mask`: N:M masks, groups of M input channels at the same kernel position;
- :func:`masked_least_squares`: per output channel, the damped least squares on the mask's support;
- :func:`hessian_vector_product`, :func:`conjugate_gradient`, :func:`armijo`, :func:`stalled`: the pieces of the
  Hessian-free Newton solver;
- :func:`sparsegpt_prune`: the layer-wise OBS solver of SparseGPT (Frantar & Alistarh, 2023).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from bench_harness import masking

# -- masks --------------------------------------------------------------------------------------------------------

def capped_magnitude_counts(weights: Mapping[str, torch.Tensor], remove: int, cap: float) -> dict[str, int]:
    """Weights removed per layer by the official SNOWS walk: all weights sorted by |w| ascending, each removed
    unless its layer already lost ``round(cap × layer size)``, until ``remove`` are removed.

    Equivalent to the walk (one pass over the sorted weights), computed by bisection on the magnitude threshold:
    a layer loses ``min(#{|w| <= t}, its cap)``. Ties at the final threshold are broken in model order, then
    flattened index order (the walk's stable sort does the same).
    Raises ValueError when the caps make ``remove`` unreachable.
    """
    caps = {n: int(round(cap * w.numel())) for n, w in weights.items()}
    if remove > sum(caps.values()):
        raise ValueError(f"cannot remove {remove} weights: the per-layer cap max_layer_sparsity={cap} allows at most "
                         f"{sum(caps.values())} over these layers; lower the target or raise the cap")
    if remove <= 0:
        return {n: 0 for n in weights}
    sorted_abs = {n: w.detach().abs().flatten().float().sort().values.cpu() for n, w in weights.items()}
    values = torch.cat(list(sorted_abs.values())).unique()  # sorted ascending

    def removed_at(t: torch.Tensor, strict: bool) -> dict[str, int]:
        side = "left" if strict else "right"
        return {n: min(int(torch.searchsorted(a, t, side=side)), caps[n]) for n, a in sorted_abs.items()}

    lo, hi = 0, len(values) - 1  # smallest threshold index whose count reaches `remove`
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(removed_at(values[mid], False).values()) >= remove:
            hi = mid
        else:
            lo = mid + 1
    t = values[lo]
    below = removed_at(t, True)  # strictly below the threshold: all of them go
    counts = dict(below)
    left = remove - sum(below.values())
    for n, a in sorted_abs.items():  # ties at t, model order
        if left <= 0:
            break
        ties = int(torch.searchsorted(a, t, side="right")) - int(torch.searchsorted(a, t, side="left"))
        take = min(ties, caps[n] - counts[n], left)
        counts[n] += max(take, 0)
        left -= max(take, 0)
    return counts


def magnitude_mask(weight: torch.Tensor, remove: int) -> torch.Tensor:
    """Keep all but the ``remove`` smallest |w| (ties: the earlier flattened index is removed first)."""
    flat = weight.detach().abs().flatten()
    mask = torch.ones_like(flat, dtype=torch.bool)
    if remove > 0:
        order = torch.sort(flat, stable=True).indices
        mask[order[:remove]] = False
    return mask.view_as(weight)


parse_nm = masking.parse_nm  # its home is the core's masking module (shared with snows/wanda)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: along the input dimension (input channels of a conv, at each kernel position; columns of a
    linear layer), every group of M consecutive inputs keeps its N largest |w|. Trailing inputs that do not
    fill a group of M keep their N largest too (all of them when fewer than N)."""
    w = weight.detach().abs()
    if w.dim() == 2:
        w = w[:, :, None]
    else:
        w = w.flatten(2)  # (out, in, positions)
    out, cin, pos = w.shape
    keep = torch.zeros_like(w, dtype=torch.bool)
    full = (cin // m) * m
    if full:
        groups = w[:, :full].reshape(out, cin // m, m, pos)
        top = groups.topk(n, dim=2).indices  # ties: topk's order (deterministic on CPU)
        kg = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
        keep[:, :full] = kg.reshape(out, full, pos)
    if full < cin:
        rest = w[:, full:]
        k = min(n, cin - full)
        top = rest.topk(k, dim=1).indices
        keep[:, full:] = torch.zeros_like(rest, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(weight.shape)


# -- least squares on the support ---------------------------------------------------------------------------------

def damp(xtx: torch.Tensor, damping: float) -> torch.Tensor:
    """XᵀX + damping · mean(diag(XᵀX)) · I (the official warm start's Tikhonov term)."""
    diag_mean = torch.diagonal(xtx).mean()
    if not bool(diag_mean > 0):
        diag_mean = torch.ones((), dtype=xtx.dtype, device=xtx.device)
    return xtx + damping * diag_mean * torch.eye(len(xtx), dtype=xtx.dtype, device=xtx.device)


def masked_least_squares(xtx: torch.Tensor, xty: torch.Tensor, mask: torch.Tensor,
                         chunk_bytes: int = 256 << 20) -> torch.Tensor:
    """For every output row o, solve ``XTX[S, S] w_S = XTY[S, o]`` on its support S = mask[o] (zero elsewhere).

    ``xtx``: (d, d) symmetric positive definite (already damped), ``xty``: (d, out), ``mask``: (out, d) bool.
    Returns (out, d) in float64. Rows are solved in batches on their gathered support systems, padded
    with identity to the batch's largest support; batches are sized to ``chunk_bytes``.
    """
    a = xtx.double()
    b = xty.double().t()  # (out, d)
    mask = mask.to(a.device).bool()
    out, d = mask.shape
    result = torch.zeros(out, d, dtype=torch.float64, device=a.device)
    sizes = mask.sum(1)
    smax = int(sizes.max()) if out else 0
    if smax == 0:
        return result
    # support indices first (in increasing order), then the rest
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :smax]
    valid = torch.arange(smax, device=a.device).unsqueeze(0) < sizes.unsqueeze(1)
    step = max(1, int(chunk_bytes // (smax * smax * 8 * 3)))
    eye = torch.eye(smax, dtype=torch.float64, device=a.device)
    for start in range(0, out, step):
        idx = order[start:start + step]
        v = valid[start:start + step].double()
        system = (a[idx.unsqueeze(2), idx.unsqueeze(1)] * (v.unsqueeze(2) * v.unsqueeze(1))
                  + torch.diag_embed(1.0 - v) * eye)
        rhs = (torch.gather(b[start:start + step], 1, idx) * v).unsqueeze(2)
        sol = _solve(system, rhs)
        result[start:start + step].scatter_(1, idx, sol.squeeze(2) * v)
    return result


def _solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched LU solve (much faster than batched Cholesky on CPU). On CPU it runs single-threaded: the batched
    LAPACK call was seen to hang with 2 intra-op threads under pytest (torch 2.14.1, OpenBLAS/OpenMP)."""
    if system.device.type != "cpu":
        return torch.linalg.solve(system, rhs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(system, rhs)
    finally:
        torch.set_num_threads(threads)


# -- the Newton solver ----------------------------------------------------------------------------------------------

def hessian_vector_product(grad: torch.Tensor, weight: torch.Tensor, vector: torch.Tensor,
                           support: torch.Tensor) -> torch.Tensor:
    """H v restricted to the support, by double backprop: ``grad`` is ∂L/∂W built with ``create_graph=True``,
    ``vector`` holds the support's entries (``weight[support]`` order); returns (H v)[support]."""
    full = torch.zeros_like(weight)
    full[support] = vector
    hvp = torch.autograd.grad(grad, weight, grad_outputs=full, retain_graph=True)[0]
    return hvp[support]


def conjugate_gradient(hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, max_iter: int,
                       tol: float = 1e-3, damping: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Solve (H + damping·I) x = b from x = 0 (the official solver: stop when ‖r‖ < tol, at most ``max_iter``
    iterations). Returns (x, iterations)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs_old = torch.dot(r, r)
    iterations = 0
    for i in range(max_iter):
        ap = hvp(p) + damping * p
        curvature = torch.dot(p, ap)
        if not bool(curvature > 0):  # non-positive curvature: stop with what we have (the official divides on)
            break
        alpha = rs_old / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = torch.dot(r, r)
        iterations = i + 1
        if bool(torch.sqrt(rs_new) < tol):
            break
        p = r + (rs_new / rs_old) * p
        rs_old = rs_new
    return x, iterations


def armijo(loss_at: Callable[[float], float], loss0: float, slope: float, c: float = 1e-5, shrink: float = 0.9,
           tries: int = 50) -> tuple[float, bool]:
    """Backtracking from α = 1: accept the first α with loss_at(α) <= loss0 + c·α·slope, else α ← shrink·α.
    Returns (α, accepted). When no α of ``tries`` is accepted, returns the last α tried and False (the official
    code then keeps that last, smallest step)."""
    alpha = 1.0
    for t in range(tries):
        if loss_at(alpha) <= loss0 + c * alpha * slope:
            return alpha, True
        if t < tries - 1:
            alpha *= shrink
    return alpha, False


def stalled(history: Sequence[float], threshold: float = 0.995, window: int = 5) -> bool:
    """The official stop rule: more than ``window`` losses recorded and each of the last ``window`` ratios
    loss[i] / loss[i-1] above ``threshold``."""
    if len(history) <= window:
        return False
    return all(history[-i - 1] > 0 and history[-i] / history[-i - 1] > threshold for i in range(1, window + 1))


# -- SparseGPT ------------------------------------------------------------------------------------------------------

def sparsegpt_prune(weight: torch.Tensor, xtx: torch.Tensor, remove: int, nm: tuple[int, int] | None = None,
                    blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: ``weight`` (out, d) with the columns in the order the mask groups them,
    ``xtx`` = XᵀX of the layer's inputs (d, d). Columns are processed left to right in blocks of ``blocksize``;
    within a block the mask is chosen by the OBS saliency w² / [H⁻¹]_jj² (``remove`` weights in total, spread
    over the blocks in proportion to their size; or N of every M consecutive columns with ``nm``), and every
    pruned weight's error is compensated on the columns to its right through the Cholesky factor of H⁻¹.
    Returns (new weight, keep mask), both (out, d)."""
    w = weight.detach().double().clone()
    h = xtx.detach().double().clone()
    out, d = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0  # inputs never active: their weights do not matter (SparseGPT zeroes them; kept here)
    h += percdamp * torch.diagonal(h).mean() * torch.eye(d, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    starts = list(range(0, d, blocksize))
    # removal counts per block: proportional to the block's size, largest remainder
    sizes = [min(blocksize, d - s) * out for s in starts]
    exact = [remove * sz / (out * d) for sz in sizes]
    quota = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(starts)), key=lambda i: exact[i] - quota[i], reverse=True)[:remove - sum(quota)]:
        quota[i] += 1
    for bi, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, d)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        pruned1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None and quota[bi] > 0:
            saliency = w1 ** 2 / torch.diagonal(hinv1).reshape(1, -1) ** 2
            order = torch.sort(saliency.flatten(), stable=True).indices[:quota[bi]]
            pruned1.view(-1)[order] = True
        for i in range(i2 - i1):
            col = w1[:, i]
            dd = hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                width = min(nm[1], i2 - i1 - i)
                saliency = w1[:, i:i + width] ** 2 / torch.diagonal(hinv1)[i:i + width].reshape(1, -1) ** 2
                drop = max(width - nm[0], 0)
                if drop:
                    idx = saliency.topk(drop, dim=1, largest=False).indices
                    pruned1[:, i:i + width].scatter_(1, idx, True)
            q = col.clone()
            q[pruned1[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / dd
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~pruned1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), keep
