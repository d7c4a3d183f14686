"""Plain NumPy EM, written from the paper's per-detection formula.

It spells out, for every detection event (batch, step j with b_j > 0), the weight of each suspect
step k <= j:  (1 - P_k) prod_{s<k} P_s prod_{s=k}^{j-1} a_s, on batches padded to the longest
route, and the log-likelihood sum_events b_j ln(sum_k weight (1 - a_j)) + sum F ln prod P; with
escapes, the final good pieces F are one more event after the last step whose pieces are good
(prod P) or escaped defects (weights prod_{s=k}^{J-1} a_s), and enter as F ln(prod P + escapes). The C++
core reaches the same sums through linear-time recursions instead, so the two agreeing checks the
algebra as well as the code. The SQUAREM and stop logic mirror ``cpp/em.cpp`` line for line. This
one is the reference, not the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fabguard.machine_yield.data import ProductionData
from fabguard.machine_yield.em import EmFits

_FLOOR = 1e-99
_LO, _HI = 1e-12, 1.0 - 1e-12  # projection of SQUAREM's extrapolated point (see cpp/em.cpp)
_APPROACH = 100.0  # how much closer to 0 or 1 than the cycle's points it may come (cpp/em.cpp: kApproach)
_STEP_FACTOR = 4.0


def fit_em_numpy(
    data: ProductionData,
    subsets: Sequence[np.ndarray],
    p0: np.ndarray,
    a0: np.ndarray,
    *,
    tol: float = 1e-13,
    max_iter: int = 1000,
    accelerate: bool = True,
    stop: str = "loglik",
    escapes: bool = True,
    progress: Callable[[int], None] | None = None,
) -> EmFits:
    shape = (len(subsets), data.n_machines)
    out = EmFits(np.empty(shape), np.empty(shape), np.empty(shape), np.empty(len(subsets), np.int32),
                 np.empty(len(subsets), bool), np.empty(len(subsets)))
    for s, batches in enumerate(subsets):
        model = _Model(data, np.asarray(batches), p0, a0, escapes)
        theta, it, conv, loglik = _drive(model, tol, max_iter, accelerate, stop)
        out.yield_[s], out.miss_rate[s], out.expected_defects[s] = model.results(theta)
        out.n_iter[s], out.converged[s], out.loglik[s] = it, conv, loglik
        if progress is not None:
            progress(s + 1)
    return out


def _drive(model: "_Model", tol, max_iter, accelerate, stop):
    """(estimate, updates, converged, loglik): the loops of ``fit_subset`` in cpp/em.cpp."""
    th0 = model.start
    if stop == "l2":
        for it in range(1, max_iter + 1):
            loglik, nxt = model.update(th0)
            change = np.sqrt(np.sum((nxt[: model.m] - th0[: model.m]) ** 2))
            th0 = nxt
            if change <= tol:
                return nxt, it, True, loglik
        return nxt, max_iter, False, loglik

    def small(new, old):
        return abs(new - old) <= tol * abs(new)

    loglik, nxt = model.update(th0)
    it = 1
    if not accelerate:
        while it < max_iter:
            th0 = nxt
            new, nxt = model.update(th0)
            it += 1
            done, loglik = small(new, loglik), new
            if done:
                return nxt, it, True, loglik
        return nxt, it, False, loglik

    step_max = 1.0
    while it < max_iter:
        th1 = nxt
        _, th2 = model.update(th1)
        it += 1
        r, w = th1 - th0, th2 - 2.0 * th1 + th0
        r2, w2 = float(np.sum(r * r)), float(np.sum(w * w))
        step = min(step_max, max(1.0, np.sqrt(r2 / w2))) if w2 > 0.0 else 1.0
        accepted = th2
        if step > 1.0 and it < max_iter:
            moving = (r != 0.0) | (w != 0.0)
            floor0 = np.minimum(th0, th2) / _APPROACH
            floor1 = np.minimum(1.0 - th0, 1.0 - th2) / _APPROACH
            x = np.minimum(1.0 - floor1, np.maximum(floor0, th0 + 2.0 * step * r + step * step * w))
            thx = np.where(moving, np.clip(x, _LO, _HI), th0)
            l_x, fx = model.update(thx)
            it += 1
            if l_x >= loglik:
                accepted = fx
            else:
                if step == step_max:
                    step_max = max(1.0, step_max / _STEP_FACTOR)
                step = 1.0
        if step == step_max:
            step_max *= _STEP_FACTOR
        th0 = accepted
        if it >= max_iter:
            return th0, it, False, loglik
        new, nxt = model.update(th0)
        it += 1
        done, loglik = small(new, loglik), new
        if done:
            return nxt, it, True, loglik
    return nxt, it, False, loglik


class _Model:
    """One subset's padded arrays; ``update(theta)`` is one EM update of theta = (yields, miss rates)."""

    def __init__(self, data, batches, p0, a0, escapes):
        self.m = m = data.n_machines
        self.escapes = escapes
        starts = data.batch_ptr[batches]
        lengths = data.batch_ptr[batches + 1] - starts
        width = int(lengths.max())
        k = np.arange(width)
        self.valid = valid = k[None, :] < lengths[:, None]
        rows = np.where(valid, starts[:, None] + k[None, :], 0)
        self.mach = mach = data.machine[rows]
        det = np.where(valid, data.defects[rows], 0).astype(np.float64)
        self.insp = insp = valid & (data.inspects[rows] == 1)
        self.det = det
        self.final_good = final_good = data.final_good[batches].astype(np.float64)

        def per_machine(where, weights):
            return np.bincount(mach[where], weights=weights[where], minlength=m)

        self.present = np.bincount(mach[valid], minlength=m) > 0
        self.inspecting = np.bincount(mach[insp], minlength=m) > 0
        self.good_final = per_machine(valid, np.broadcast_to(final_good[:, None], valid.shape))
        self.detected = per_machine(valid, det)
        self.ev_batch, ev_step = np.nonzero(det > 0)  # detection events
        self.ev_count = det[self.ev_batch, ev_step]
        self.suspect = k[None, :] <= ev_step[:, None]  # k <= j
        self.upstream = k[None, :] < ev_step[:, None]  # s < j
        self.ev_mach = mach[self.ev_batch]
        self.n_batches = len(batches)
        self.start = np.r_[np.asarray(p0, np.float64), np.where(self.inspecting, a0, 1.0)]
        self.d = self.missed = None

    def step_terms(self, theta):
        """(loglik, E, H, S) at theta: per (batch, step), expected defects made there, pieces good after
        it (with escapes, plus the final pieces that are truly good), and, at inspecting steps,
        defects that slipped past it; zero outside the batch's steps."""
        m, mach, valid, insp = self.m, self.mach, self.valid, self.insp
        p, a = theta[:m], theta[m:]
        step_p = np.where(valid, p[mach], 1.0)
        step_a = np.where(insp, a[mach], 1.0)
        survive = np.concatenate([np.ones((self.n_batches, 1)), np.cumprod(step_p[:, :-1], axis=1)], axis=1)
        first_defect = (1.0 - step_p) * survive * valid  # (1 - P_k) prod_{s<k} P_s

        passed = np.where(self.upstream, step_a[self.ev_batch], 1.0)
        slip = np.cumprod(passed[:, ::-1], axis=1)[:, ::-1]  # prod_{s=k}^{j-1} a_s
        weight = first_defect[self.ev_batch] * slip * self.suspect
        total = weight.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.where(total > 0, self.ev_count[:, None] * weight / total, 0.0)  # e_ijk
            detected = self.detected
            loglik = self.ev_count @ np.log(total[:, 0]) + detected[detected > 0] @ np.log(1.0 - a[detected > 0])

        shape = (self.n_batches, e.shape[1])
        made, good_after, slipped_past = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        np.add.at(made, self.ev_batch, e)
        np.add.at(good_after, self.ev_batch, np.cumsum(e[:, ::-1], axis=1)[:, ::-1] - e)  # good after k, bad later
        # defects made at or before s, detected at j > s: they slipped past s
        np.add.at(slipped_past, self.ev_batch, np.where(insp[self.ev_batch] & self.upstream, np.cumsum(e, axis=1), 0.0))
        if self.escapes:  # the final good pieces: truly good (prod P) or escaped every inspection
            escape_weight = first_defect * np.cumprod(step_a[:, ::-1], axis=1)[:, ::-1]  # prod_{s>=k} a_s
            good_prob = survive[:, -1] * step_p[:, -1]  # prod P
            unflagged = good_prob + escape_weight.sum(axis=1)
            fg = self.final_good
            with np.errstate(invalid="ignore", divide="ignore"):
                loglik += fg[fg > 0] @ np.log(unflagged[fg > 0])
                scale = np.where(fg > 0, fg / unflagged, 0.0)
            esc = scale[:, None] * escape_weight
            made += esc
            good_after += np.cumsum(esc[:, ::-1], axis=1)[:, ::-1] - esc + (scale * good_prob)[:, None]
            slipped_past += np.where(insp, np.cumsum(esc, axis=1), 0.0)
        else:
            loglik += self.good_final[self.present] @ np.log(p[self.present])
            good_after += self.final_good[:, None]
        return loglik, made * valid, good_after * valid, slipped_past

    def update(self, theta):
        m, mach, valid, insp, present = self.m, self.mach, self.valid, self.insp, self.present
        p, a = theta[:m], theta[m:]
        loglik, made, good_after, slipped_past = self.step_terms(theta)
        d = np.bincount(mach[valid], weights=made[valid], minlength=m)
        g = np.bincount(mach[valid], weights=good_after[valid], minlength=m)
        missed = np.bincount(mach[insp], weights=slipped_past[insp], minlength=m)
        detected = self.detected

        with np.errstate(invalid="ignore", divide="ignore"):
            p_new = np.where(present & (g + d > 0), g / (g + d), p)
            seen = missed + detected
            a_new = np.where(self.inspecting & (seen > 0), missed / seen, a)
        p_new = np.where(present & ~(p_new > 0), _FLOOR, p_new)
        a_new = np.where(self.inspecting & ~(a_new > 0), _FLOOR, a_new)
        self.d, self.missed = d, missed
        return loglik, np.r_[p_new, a_new]

    def results(self, theta):
        """(yield, miss rate, expected defects) as the report shows them; d from the last update."""
        m, present = self.m, self.present
        informed = self.inspecting & (self.missed + self.detected > 0)
        return (np.where(present, theta[:m], np.nan), np.where(present & informed, theta[m:], np.nan),
                np.where(present, self.d, np.nan))


def score_outer_product_numpy(data: ProductionData, p: np.ndarray, a: np.ndarray, free_index: np.ndarray):
    """The NumPy reference of ``_core.score_outer_product`` (escapes model, all batches): per-batch
    scores d/dp_m = H / p_m - E / (1 - p_m), d/da_m = S / a_m - b / (1 - a_m), summed per (batch,
    parameter) into a dense (batches x 2 machines) matrix. Returns (grad, opg, loglik)."""
    batches = np.arange(data.n_batches)
    model = _Model(data, batches, p, a, escapes=True)
    m, mach, valid, insp = model.m, model.mach, model.valid, model.insp
    theta = np.r_[p, a]
    loglik, made, good_after, slipped_past = model.step_terms(theta)
    rows = np.broadcast_to(batches[:, None], valid.shape)
    with np.errstate(divide="ignore", invalid="ignore"):  # padding and steps that do not inspect are masked below
        score_p = good_after / p[mach] - made / (1.0 - p[mach])
        score_a = slipped_past / a[mach] - np.where(model.det > 0, model.det / (1.0 - a[mach]), 0.0)
    per_batch = np.bincount((rows * 2 * m + mach)[valid], weights=score_p[valid], minlength=data.n_batches * 2 * m)
    per_batch += np.bincount((rows * 2 * m + m + mach)[insp], weights=score_a[insp], minlength=data.n_batches * 2 * m)
    scores = per_batch.reshape(data.n_batches, 2 * m)[:, np.flatnonzero(free_index >= 0)]
    return scores.sum(axis=0), scores.T @ scores, loglik
