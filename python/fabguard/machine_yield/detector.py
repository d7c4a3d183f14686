"""Low-yield machine detection: EM + resampling + bootstrap + one-sided test (Adipraja et al. 2024).

1. Fit the EM on all batches and on R resamples of a fraction f of the batches (each resample its
   own starting values and counts; the resamples are fitted in parallel in the C++ core).
2. Per machine, a BCa bootstrap CI of the mean of its resample estimates (resamples without the
   machine carry no information about it and are left out), and a one-sided bootstrap test of
   "mean yield < threshold": p = (1 + #{bootstrap means >= threshold}) / (B + 1).
3. Low-yield: mean below the threshold with p < alpha, lowest first, at most ``max_candidates``.

The CI describes the mean of the resample estimates, as in the paper. Resamples of 80% of the
batches overlap heavily, so it is narrower than a CI of the machine's yield itself would be; read it
as a ranking aid, not as a coverage statement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from fabguard.machine_yield._forms import (MAX_ITER, MAX_THREADS, N_BOOTSTRAP, PROBABILITY_OPEN, RESAMPLES, SEED64,
                                           THREADS, YIELD)
from fabguard.machine_yield.data import load_production
from fabguard.machine_yield.em import fit_subsets
from fabguard.machine_yield.report import YieldReport, flag
from fabguard.params import NONE, POSITIVE_INT, Estimator, Interval, Options, check_memory

_BOOT_CHUNK, _BOOT_BATCH = 100, 1000  # machines per scipy.stats.bootstrap call, resamples per batch


class LowYieldDetector(Estimator):
    """Find machines whose yield is significantly low, from routes and detected defect counts.

    Parameters mirror the paper: ``resamples`` (30) fits on a ``fraction`` (0.8) of the batches;
    a ``confidence`` (0.95) BCa bootstrap CI from ``n_bootstrap`` (10,000) resamples; the
    threshold defaults to the mean of all machines' full-data yields. ``tol`` and ``max_iter``
    stop the EM. ``threads`` defaults to all cores; results are identical for any count.
    ``engine="numpy"`` runs the plain NumPy reference instead of the C++ core.

    Parameters are checked at the start of :meth:`fit` (an
    :class:`~fabguard.errors.InvalidParameterError` names the one refused), and so is the memory the
    fit will need (a :class:`~fabguard.errors.ResourceError` gives the figure).

    After :meth:`fit`: ``report_`` (:class:`YieldReport`), ``yield_`` and ``miss_rate_``
    (full-data fit, Series by machine), ``resample_yields_`` (DataFrame, resamples x machines),
    ``threshold_``, ``low_yield_machines_``.
    """

    _parameter_constraints = {
        "resamples": [RESAMPLES],
        "fraction": [YIELD],
        "alpha": [PROBABILITY_OPEN],
        "threshold": [NONE, YIELD],
        "max_candidates": [POSITIVE_INT],
        "confidence": [PROBABILITY_OPEN],
        "n_bootstrap": [N_BOOTSTRAP],
        "tol": [Interval(float, 0, None)],
        "max_iter": [MAX_ITER],
        "threads": [NONE, THREADS],
        "engine": [Options(("cpp", "numpy"))],
        "seed": [SEED64],
    }

    def __init__(
        self,
        resamples: int = 30,
        fraction: float = 0.8,
        alpha: float = 0.05,
        threshold: float | None = None,
        max_candidates: int = 10,
        confidence: float = 0.95,
        n_bootstrap: int = 10_000,
        tol: float = 1e-3,
        max_iter: int = 100,
        threads: int | None = None,
        engine: str = "cpp",
        seed: int = 0,
    ):
        self.resamples = resamples
        self.fraction = fraction
        self.alpha = alpha
        self.threshold = threshold
        self.max_candidates = max_candidates
        self.confidence = confidence
        self.n_bootstrap = n_bootstrap
        self.tol = tol
        self.max_iter = max_iter
        self.threads = threads
        self.engine = engine
        self.seed = seed

    def fit(self, data, progress: Callable[[int, int], None] | None = None) -> "LowYieldDetector":
        """Estimate every machine's yield and flag the low ones.

        ``data``: anything :func:`load_production` reads. ``progress(done, total)`` is called as
        EM fits finish (total = resamples + 1).
        """
        self._validate_params()
        started = time.perf_counter()
        data = load_production(data)
        check_memory(self._fit_bytes(data), f"LowYieldDetector.fit on {data.source}",
                     "lower resamples or n_bootstrap")
        from fabguard import _core

        subsets = [np.arange(data.n_batches)] + list(
            _core.draw_resamples(data.n_batches, self.fraction, self.resamples, self.seed)
        )
        total = len(subsets)
        fits = fit_subsets(
            data, subsets, tol=self.tol, max_iter=self.max_iter,
            threads=self.threads or min(os.cpu_count() or 1, MAX_THREADS), engine=self.engine,
            progress=None if progress is None else (lambda done: progress(done, total)),
        )
        resampled = fits.yield_[1:]
        threshold = float(np.nanmean(fits.yield_[0])) if self.threshold is None else float(self.threshold)
        mean, low, high, p = bootstrap_below(resampled, threshold, self.confidence, self.n_bootstrap, self.seed)

        table = data.machine_usage()
        table["yield"] = mean
        table["ci_low"], table["ci_high"], table["p_value"] = low, high, p
        table["yield_full"] = fits.yield_[0]
        table["miss_rate"] = fits.miss_rate[0]
        table["expected_defects"] = fits.expected_defects[0]
        table["resamples_used"] = np.sum(~np.isnan(resampled), axis=0)
        order = np.lexsort((np.arange(len(mean)), np.where(np.isnan(mean), np.inf, mean)))
        table["significant"], table["low_yield"] = flag(mean, p, threshold, self.alpha, self.max_candidates, order)
        table = table.iloc[order].reset_index(drop=True)

        self.threshold_ = threshold
        self.yield_ = pd.Series(fits.yield_[0], index=data.machine_ids, name="yield")
        self.miss_rate_ = pd.Series(fits.miss_rate[0], index=data.machine_ids, name="miss_rate")
        self.resample_yields_ = pd.DataFrame(resampled, columns=data.machine_ids)
        self.n_iter_ = fits.n_iter
        self.report_ = YieldReport(
            method="em",
            machines=table,
            threshold=threshold,
            alpha=self.alpha,
            params=self.get_params(),
            summary={
                "source": data.source,
                "batches": data.n_batches,
                "machines": data.n_machines,
                "rows": data.n_rows,
                "em_iterations_full": int(fits.n_iter[0]),
                "em_converged_full": bool(fits.converged[0]),
                "em_iterations_resamples_median": float(np.median(fits.n_iter[1:])),
                "em_converged_resamples": int(np.sum(fits.converged[1:])),
                "runtime_s": round(time.perf_counter() - started, 3),
            },
        )
        self.low_yield_machines_ = self.report_.low_yield
        return self

    def _fit_bytes(self, data) -> float:
        """Peak memory of a fit, estimated from its largest arrays: the resampled batch indices (drawn,
        then concatenated), the (resamples, machines) results and their copies, the NumPy engine's
        padded (batches, steps) arrays, and scipy's bootstrap of one chunk of machines."""
        r, m, b = self.resamples, data.n_machines, self.n_bootstrap
        k = max(1.0, round(self.fraction * data.n_batches))
        total = 2 * 8 * r * k + 6 * 8 * (r + 1) * m
        if self.engine == "numpy":
            total += 20 * 8 * k * float(np.max(np.diff(data.batch_ptr)))
        chunk, batch = min(_BOOT_CHUNK, m), min(_BOOT_BATCH, b)
        total += 8 * (chunk + 1) * batch * r + 32 * chunk * b + 8 * chunk * min(_BOOT_BATCH, r) * r
        return float(total)


def bootstrap_below(estimates: np.ndarray, threshold: float, confidence: float, n_bootstrap: int, seed: int):
    """Per column of ``estimates`` (resamples x machines; NaN = absent): the mean, a BCa bootstrap
    CI of the mean, and the one-sided bootstrap p-value of "mean < threshold".

    Columns with fewer than 2 estimates get NaN. Columns are grouped by their number of estimates
    so that scipy's vectorised bootstrap serves them all; the random stream depends only on seed.
    """
    n_machines = estimates.shape[1]
    valid = ~np.isnan(estimates)
    counts = valid.sum(axis=0)
    mean = np.full(n_machines, np.nan)
    low, high, p = mean.copy(), mean.copy(), mean.copy()
    with np.errstate(invalid="ignore"):
        mean[counts > 0] = np.nanmean(estimates[:, counts > 0], axis=0)
    from scipy import stats

    rng = np.random.default_rng(seed)
    for n in np.unique(counts[counts >= 2]):
        cols = np.flatnonzero(counts == n)
        x = estimates.T[cols][valid.T[cols]].reshape(len(cols), n)  # each row: that machine's estimates
        spread = np.ptp(x, axis=1) > 0
        flat = cols[~spread]  # identical estimates: the bootstrap distribution is a point
        low[flat] = high[flat] = mean[flat]
        p[flat] = np.where(mean[flat] < threshold, 1.0 / (n_bootstrap + 1), 1.0)
        if spread.any():
            cols, x = cols[spread], x[spread]
            for chunk in range(0, len(cols), _BOOT_CHUNK):  # bounds memory (LowYieldDetector._fit_bytes)
                part = slice(chunk, chunk + _BOOT_CHUNK)
                res = stats.bootstrap(
                    (x[part],), np.mean, n_resamples=n_bootstrap, confidence_level=confidence, method="BCa",
                    axis=-1, vectorized=True, batch=_BOOT_BATCH, rng=rng,
                )
                low[cols[part]] = res.confidence_interval.low
                high[cols[part]] = res.confidence_interval.high
                above = np.sum(res.bootstrap_distribution >= threshold, axis=-1)
                p[cols[part]] = (1.0 + above) / (n_bootstrap + 1.0)
    return mean, low, high, p
