"""Tolerances argued from the arithmetic, shared by the active-inspection tests.

Float32 comparisons use :func:`fabguard.runtime.parity.float32_bound` (two summation orders of ``depth``
terms with absolute sum ``scale``). Float64 ones use the same argument with float64's unit round-off,
2^-53 instead of 2^-24: the float32 bound times 2^-29.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from fabguard.runtime.parity import float32_bound


def float64_bound(scale: float, depth: int) -> float:
    return float32_bound(scale, depth) * 2.0**-29


def platt_score_bound(members: np.ndarray, member_bound: float, coef: float, intercept: float) -> np.ndarray:
    """Per row, how far ``expit(coef * logit(mean_k expit(m_k)) + intercept)`` (a calibrated fault score)
    can move when every member output ``m_k`` moves by at most ``member_bound``: the first-order term
    ``sum_k |df/dm_k| * member_bound`` with ``df/dm_k = f (1 - f) coef p_k (1 - p_k) / (K pbar (1 - pbar))``,
    doubled to cover the second-order term (the derivative changes by a relative O(member_bound) over a
    step that small, far below a factor 2). Float64 rounding of these few operations is ~1e-16, below the
    float32 term."""
    p = expit(members)
    pbar = p.mean(axis=1)
    logit = np.log(pbar) - np.log1p(-pbar)
    f = expit(coef * logit + intercept)
    grad = f * (1 - f) * abs(coef) * (p * (1 - p)).sum(axis=1) / (members.shape[1] * pbar * (1 - pbar))
    return 2 * grad * member_bound
