"""Statistics of leaderboards, in one place (scipy's Student t functions, ``scipy.special.stdtr``/``stdtrit``: the
functions behind ``scipy.stats.t``, imported when first needed: ``scipy.stats`` alone takes half a second).

- Interval: the two-sided 95 % confidence interval of a mean over seeds, Student t with n − 1 degrees of
  freedom: mean ± t₀.₉₇₅(n − 1) · s / √n (s the sample standard deviation); undefined (NaN) for one seed.
- Paired comparison with a control (random, magnitude, dense): over the seeds both methods ran, the differences
  d = top-1(method) − top-1(control); their mean, the same t interval, and the two-sided p-value of the paired
  t-test (``scipy.stats.ttest_rel``'s statistic mean(d) / (s_d / √n), t distribution with n − 1 degrees of
  freedom); undefined for fewer than two pairs or when every difference is equal (s_d = 0 with mean 0 gives
  p = 1; with mean ≠ 0, p = 0).
- Chance level (:func:`at_chance`): a mean top-1 is *at chance* when it is not clearly above guessing, 1 / C for C
  classes: mean ≤ 1/C + margin. The margin is the larger of 2 points (``CHANCE_TOLERANCE``) and, when the test-set
  size n is known, the noise of guessing: z · √(p(1 − p) / (n · seeds)) with p = 1/C and z = 3.29 (a guessing
  network's mean over that many test examples stays below it with probability 0.9995). At or below chance
  counts: a network that learned nothing is flagged whether it lands a little above or below 1/C. With 10 classes
  the 2 points cover the noise of any test set of 2,500 examples or more; a smaller test set (``recipe.test_subset``)
  widens the margin.

The vectorised forms (arrays of counts, means, standard deviations) are what the leaderboard uses; the scalar
forms are the same formulas for one group, and are what the tests check against hand-computed values.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def t975(df) -> np.ndarray | float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (NaN for df < 1)."""
    from scipy.special import stdtrit  # the quantile of Student's t (scipy.stats.t.ppf computes it so)

    arr = np.asarray(df, dtype=float)
    out = np.where(arr >= 1, stdtrit(np.maximum(arr, 1), 0.975), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def ci95_halfwidth(std, count) -> np.ndarray:
    """t₀.₉₇₅(n − 1) · s / √n, NaN where n < 2."""
    n = np.asarray(count, dtype=float)
    return t975(n - 1) * np.asarray(std, dtype=float) / np.sqrt(np.where(n > 0, n, np.nan))


def paired_t_pvalue(mean, std, count) -> np.ndarray:
    """Two-sided p-value of the paired t-test from the differences' mean, sample std and count."""
    from scipy.special import stdtr  # Student's t distribution function (scipy.stats.t.sf(x) = stdtr(df, -x))

    mean, std, n = (np.asarray(v, dtype=float) for v in (mean, std, count))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (std / np.sqrt(n))
        p = 2.0 * stdtr(np.maximum(n - 1, 1), -np.abs(t))
    p = np.where(std == 0, np.where(mean == 0, 1.0, 0.0), p)
    return np.where(n >= 2, p, np.nan)


CHANCE_TOLERANCE = 0.02  # 2 points of accuracy
CHANCE_Z = 3.29  # one-sided 0.9995 quantile of the normal distribution


def at_chance(top1, num_classes, n_test=None, seeds=1, tolerance: float = CHANCE_TOLERANCE):
    """Whether a (mean) top-1 is within noise of chance, 1 / ``num_classes`` (see the module docstring for the
    rule). Scalars or arrays; False where the accuracy or the number of classes is unknown; ``n_test`` (test
    examples per run) and ``seeds`` (runs averaged) may be NaN/None: the margin is then the tolerance alone."""
    top1, classes = np.asarray(top1, dtype=float), np.asarray(num_classes, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        chance = 1.0 / classes
        n = np.asarray(np.nan if n_test is None else n_test, dtype=float) * np.maximum(
            np.nan_to_num(np.asarray(seeds, dtype=float), nan=1.0), 1.0)
        noise = CHANCE_Z * np.sqrt(chance * (1.0 - chance) / n)
        margin = np.fmax(tolerance, np.where(n > 0, noise, np.nan))
        out = (top1 <= chance + margin) & (classes >= 1)
    return bool(out) if np.ndim(out) == 0 else out


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, sample standard deviation, 95 % CI half-width, n); NaN where undefined (n < 2 for std and CI)."""
    xs = np.array([float(v) for v in values if v is not None and not math.isnan(float(v))])
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n < 2:
        return float(xs.mean()), math.nan, math.nan, 1
    std = float(xs.std(ddof=1))
    return float(xs.mean()), std, float(ci95_halfwidth(std, n)), n


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int, float]:
    """Mean of a[seed] − b[seed] over seeds present in both, its 95 % CI half-width, the number of pairs and
    the paired t-test's two-sided p-value."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean, std, ci, n = mean_std_ci(diffs)
    return mean, ci, n, float(paired_t_pvalue(mean, std, n)) if n >= 2 else math.nan
