"""Pure statistics for leaderboards: means, confidence intervals, paired differences."""
from __future__ import annotations

import math
from typing import Sequence

# Two-sided 95 % quantiles of Student's t, by degrees of freedom (1..30); beyond 30 the normal 1.96 is used
# with a small-sample correction (error < 0.3 %).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    return 1.959964 + 2.37 / df


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, sample standard deviation, 95 % CI half-width, n); NaN where undefined (n < 2 for std and CI)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, math.nan, 1
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, std, t975(n - 1) * std / math.sqrt(n), n


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of a[seed] - b[seed] over seeds present in both, its 95 % CI half-width, and the number of pairs."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean, _, ci, n = mean_std_ci(diffs)
    return mean, ci, n
