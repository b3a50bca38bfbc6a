"""Empirical measures of the iterates: tail-index estimation.

(The invariant-measure toolkit of seed 000 grows here: time and ensemble averages,
vanishing change, distances between empirical measures, periodic orbits, R-hat/ESS.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from dynsim._validate import check_int

__all__ = ["HillEstimate", "hill_tail_index"]


class HillEstimate(NamedTuple):
    """Hill's estimate of the tail index ``alpha`` of ``P(|X| > u) ~ u^-alpha``, with a confidence interval."""

    alpha: float
    low: float
    high: float
    k: int
    threshold: float


def hill_tail_index(samples, k: int | None = None, *, level: float = 0.95) -> HillEstimate:
    """Hill (1975): ``1/alpha = (1/k) sum_{i<=k} log(X_(i) / X_(k+1))`` over the ``k`` largest ``|X|``.

    ``k`` defaults to ``round(sqrt(n))``. The interval uses the asymptotic law
    ``sqrt(k) (alpha_hat - alpha) / alpha -> N(0, 1)`` (exact Pareto tails; with
    slowly varying corrections the estimate is also biased, more so for large ``k``).
    """
    x = np.sort(np.abs(np.asarray(samples, dtype=np.float64)).ravel())[::-1]
    x = x[np.isfinite(x)]
    n = x.size
    if n < 3:
        raise ValueError(f"need at least 3 finite samples, got {n}")
    k = int(round(np.sqrt(n))) if k is None else check_int("k", k, minimum=2, maximum=n - 1)
    if x[k] <= 0:
        raise ValueError(f"the {k + 1}-th largest |sample| is 0: take a smaller k")
    inverse = np.mean(np.log(x[:k] / x[k]))
    alpha = 1.0 / inverse
    z = stats.norm.ppf(0.5 + level / 2)
    half = z * alpha / np.sqrt(k)
    return HillEstimate(alpha, alpha - half, alpha + half, k, float(x[k]))
