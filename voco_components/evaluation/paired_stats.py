"""Statistics over repeated runs: mean and SD, percentile bootstrap CI, exact sign-flip test, Holm correction."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_sd", "bootstrap_ci", "sign_flip_test", "holm"]

EXACT_MAX_PAIRS = 16
"""Up to this many pairs the sign-flip test enumerates all 2^n sign patterns; above it, it samples them."""


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value) of (N,) values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_sd needs at least one value.")
    sd = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return float(array.mean()), sd


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, num_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of (N,) values.

    ``num_resamples`` resamples of N values with replacement are drawn by ``numpy.random.default_rng(seed)``
    (``rng.integers(0, N, size=(num_resamples, N))``); the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (numpy's default linear interpolation) of the resampled means.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(num_resamples, array.size))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _sign_patterns(n: int, num_samples: int, seed: int) -> np.ndarray:
    """(P, n) signs ±1: all 2^n patterns when n <= EXACT_MAX_PAIRS, else ``num_samples`` random ones."""
    if n <= EXACT_MAX_PAIRS:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return np.random.default_rng(seed).choice((1.0, -1.0), size=(num_samples, n))


def sign_flip_test(differences: Sequence[float], num_samples: int = 100000, seed: int = 0) -> float:
    """Two-sided paired permutation test of a zero mean difference, by flipping the signs of the (N,) differences.

    Under the null hypothesis each paired difference is as likely to be positive as negative; the p-value is
    the fraction of sign patterns whose |sum| is at least the observed |sum| (with a relative tolerance of
    1e-9 for ties). Exact (all 2^N patterns) for N <= :data:`EXACT_MAX_PAIRS`; above that, ``num_samples``
    random patterns plus the observed one, (count + 1) / (num_samples + 1). N pairs can give no p-value below
    2 / 2^N: with 3 pairs the smallest is 0.25. All-zero differences give 1.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip_test needs at least one paired difference.")
    observed = abs(d.sum())
    sums = np.abs(_sign_patterns(d.size, num_samples, seed) @ d)
    extreme = int((sums >= observed * (1.0 - 1e-9) - 1e-12).sum())
    if d.size <= EXACT_MAX_PAIRS:
        return extreme / sums.size
    return (extreme + 1) / (sums.size + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN entries stay NaN and are not counted).

    Sorted ascending, the i-th of m p-values (0-based) becomes max over j <= i of min(1, (m - j) p_(j)).
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="mergesort")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
