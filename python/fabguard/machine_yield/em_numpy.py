"""Plain NumPy EM, written from the paper's per-detection formula.

It spells out, for every detection event (batch, step j with b_j > 0), the weight of each suspect
step k <= j:  (1 - P_k) prod_{s<k} P_s prod_{s=k}^{j-1} a_s, on batches padded to the longest
route. The C++ core reaches the same sums through linear-time recursions instead, so the two
agreeing checks the algebra as well as the code. This one is the reference, not the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fabguard.machine_yield.data import ProductionData
from fabguard.machine_yield.em import EmFits

_FLOOR = 1e-99


def fit_em_numpy(
    data: ProductionData,
    subsets: Sequence[np.ndarray],
    p0: np.ndarray,
    a0: np.ndarray,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    progress: Callable[[int], None] | None = None,
) -> EmFits:
    shape = (len(subsets), data.n_machines)
    out = EmFits(np.empty(shape), np.empty(shape), np.empty(shape), np.empty(len(subsets), np.int32),
                 np.empty(len(subsets), bool))
    for s, batches in enumerate(subsets):
        y, a, d, it, conv = _fit_one(data, np.asarray(batches), p0, a0, tol, max_iter)
        out.yield_[s], out.miss_rate[s], out.expected_defects[s] = y, a, d
        out.n_iter[s], out.converged[s] = it, conv
        if progress is not None:
            progress(s + 1)
    return out


def _fit_one(data, batches, p0, a0, tol, max_iter):
    n_machines = data.n_machines
    starts = data.batch_ptr[batches]
    lengths = data.batch_ptr[batches + 1] - starts
    width = int(lengths.max())
    k = np.arange(width)
    valid = k[None, :] < lengths[:, None]
    rows = np.where(valid, starts[:, None] + k[None, :], 0)
    mach = data.machine[rows]
    det = np.where(valid, data.defects[rows], 0).astype(np.float64)
    insp = valid & (data.inspects[rows] == 1)
    final_good = data.final_good[batches].astype(np.float64)

    def per_machine(where, weights):
        return np.bincount(mach[where], weights=weights[where], minlength=n_machines)

    present = np.bincount(mach[valid], minlength=n_machines) > 0
    inspecting = np.bincount(mach[insp], minlength=n_machines) > 0
    good_final = per_machine(valid, np.broadcast_to(final_good[:, None], valid.shape))
    detected = per_machine(valid, det)

    ev_batch, ev_step = np.nonzero(det > 0)  # detection events
    ev_count = det[ev_batch, ev_step]
    suspect = k[None, :] <= ev_step[:, None]  # k <= j
    upstream = k[None, :] < ev_step[:, None]  # s < j
    ev_mach = mach[ev_batch]

    p = p0.astype(np.float64).copy()
    a = np.where(inspecting, a0, 1.0)
    converged = False
    for it in range(1, max_iter + 1):
        step_p = np.where(valid, p[mach], 1.0)
        step_a = np.where(insp, a[mach], 1.0)
        survive = np.concatenate([np.ones((len(batches), 1)), np.cumprod(step_p[:, :-1], axis=1)], axis=1)
        first_defect = (1.0 - step_p) * survive * valid  # (1 - P_k) prod_{s<k} P_s

        passed = np.where(upstream, step_a[ev_batch], 1.0)
        slip = np.cumprod(passed[:, ::-1], axis=1)[:, ::-1]  # prod_{s=k}^{j-1} a_s
        weight = first_defect[ev_batch] * slip * suspect
        total = weight.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.where(total > 0, ev_count[:, None] * weight / total, 0.0)  # e_ijk

        d = np.bincount(ev_mach.ravel(), weights=e.ravel(), minlength=n_machines)
        later = np.cumsum(e[:, ::-1], axis=1)[:, ::-1] - e  # h_ijk: good after k, bad later
        g = good_final + np.bincount(ev_mach.ravel(), weights=later.ravel(), minlength=n_machines)
        slipped = np.cumsum(e, axis=1)  # defects made at or before s, detected at j > s
        past = insp[ev_batch] & upstream
        missed = np.bincount(ev_mach[past], weights=slipped[past], minlength=n_machines)

        with np.errstate(invalid="ignore", divide="ignore"):
            p_new = np.where(present & (g + d > 0), g / (g + d), p)
            seen = missed + detected
            a_new = np.where(inspecting & (seen > 0), missed / seen, a)
        p_new = np.where(present & ~(p_new > 0), _FLOOR, p_new)
        a_new = np.where(inspecting & ~(a_new > 0), _FLOOR, a_new)
        change = np.sqrt(np.sum((p_new - p)[present] ** 2))
        p, a = p_new, a_new
        if change <= tol:
            converged = True
            break

    informed = inspecting & (missed + detected > 0)
    return (np.where(present, p, np.nan), np.where(present & informed, a, np.nan), np.where(present, d, np.nan),
            it, converged)
