"""Low-yield machine detection: EM, an interval per machine, and a decision across machines.

Intervals (``interval``):
- ``"information"`` (default): the EM fitted to convergence on all batches; the standard errors from
  the Fisher information estimated by the outer product of the per-batch scores (one pass over the
  data, no refit: see :func:`~fabguard.machine_yield.em.information_se`); the interval is the
  estimate +- z x SE (normal quantile) clipped to [0, 1]. That sum of one rank-1 term per batch is
  singular with no more batches than parameters (yields and informed miss rates): such data get the
  bootstrap interval, and the report's summary says so (``interval``, ``interval_note``).
- ``"bootstrap"``: the EM fitted to convergence on all batches, then on ``resamples``
  bootstrap resamples of the batches (full size, with replacement), each warm-started from the
  full-data estimate. The standard error is the resamples' standard deviation; the interval is the
  estimate +- t quantile x SE (Student t with resamples - 1 degrees of freedom, since the SE is itself
  estimated from few resamples). It describes the uncertainty of the machine's yield under the model.
- ``"paper"``: the paper's procedure: the authors' plain EM (L2 stop 1e-3) on ``resamples`` subsets of
  a ``fraction`` of the batches, and a BCa bootstrap CI of the mean of those estimates. That is the
  uncertainty of a mean of overlapping estimates, far narrower than the yield's own: a ranking aid.

Decisions (``rule``):
- ``"fdr"`` (default): threshold = robust baseline (median of the machines' yields) minus a margin
  (default: three robust standard deviations of those yields, at least the baseline's own defect
  rate 1 - baseline); one-sided p-value of "yield < threshold" per machine, and Benjamini-Hochberg at
  ``alpha`` across the machines tested. Machines in fewer than ``min_batches`` batches are reported
  as too few to tell and not tested, and so are steps without a machine id (their pseudo-machine).
  ``max_candidates`` only limits what the text report lists.
- ``"paper"``: threshold = mean of all machines' yields; flagged when below it with p < ``alpha``,
  lowest first, at most ``max_candidates``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np

from fabguard.machine_yield._forms import (MAX_ITER, MAX_THREADS, N_BOOTSTRAP, PROBABILITY_OPEN, RESAMPLES, SEED64,
                                           THREADS, YIELD)
from fabguard.machine_yield.data import NO_MACHINE, load_production
from fabguard.machine_yield.em import START_MAX, START_MIN, fit_subsets, information_se, starting_values
from fabguard.machine_yield.report import YieldReport, flag
from fabguard.params import NONE, POSITIVE_INT, Estimator, Instance, Interval, Options, check_memory

_BOOT_CHUNK, _BOOT_BATCH = 100, 1000  # machines per scipy.stats.bootstrap call, resamples per batch
#: The paper mode's EM: the authors' plain EM, stopped at an L2 change of the yields of 1e-3 or 100 updates.
PAPER_TOL, PAPER_MAX_ITER = 1e-3, 100
#: Status of a machine in the report.
LOW, NOT_FLAGGED, TOO_FEW, NO_ID = "low", "not flagged", "too few batches", "no machine id"
_MAD_SCALE = 1.4826  # MAD x this = standard deviation for normal data


class LowYieldDetector(Estimator):
    """Find machines whose yield is confidently low, from routes and detected defect counts.

    ``interval`` ("information", "bootstrap" or "paper") and ``rule`` ("fdr" or "paper") are described
    in the module docstring. ``resamples`` (30): bootstrap resamples, or the paper's subsets of a
    ``fraction`` (0.8) of the batches. ``alpha`` (0.05): the false discovery rate (fdr rule) or the
    per-machine test level (paper rule). ``threshold``: a fixed yield threshold instead of the
    rule's; ``margin``: the fdr rule's margin below the baseline, in yield units (default derived
    from the data). ``min_batches`` (10): fewer batches than this and a machine is not tested.
    ``max_candidates`` (10): the paper rule's list length; with the fdr rule, the text report's.
    ``confidence`` (0.95) sets the interval level; ``n_bootstrap`` the paper mode's BCa resamples.
    EM: stop when the relative change of the log-likelihood is <= ``tol`` (full data; its default
    1e-13 puts the yields within 1e-6 of the optimum, measured up to 500 machines x 5000 batches)
    or ``resample_tol`` (bootstrap resamples: their spread, not their last digits, makes the
    interval), or after ``max_iter``
    updates; ``accelerate`` uses SQUAREM. ``threads`` defaults to all cores; results are identical
    for any count. ``engine="numpy"`` runs the plain NumPy reference instead of the C++ core.

    Parameters are checked at the start of :meth:`fit` (an
    :class:`~fabguard.errors.InvalidParameterError` names the one refused), and so is the memory the
    fit will need (a :class:`~fabguard.errors.ResourceError` gives the figure).

    After :meth:`fit`: ``report_`` (:class:`YieldReport`), ``yield_`` and ``miss_rate_``
    (full-data fit, Series by machine), ``resample_yields_`` (DataFrame, resamples x machines),
    ``threshold_``, ``low_yield_machines_``, ``n_iter_`` (EM updates per fit, full data first).
    """

    _parameter_constraints = {
        "interval": [Options(("information", "bootstrap", "paper"))],
        "rule": [Options(("fdr", "paper"))],
        "resamples": [RESAMPLES],
        "fraction": [YIELD],
        "alpha": [PROBABILITY_OPEN],
        "threshold": [NONE, YIELD],
        "margin": [NONE, Interval(float, 0, 1, "left")],
        "min_batches": [POSITIVE_INT],
        "max_candidates": [POSITIVE_INT],
        "confidence": [PROBABILITY_OPEN],
        "n_bootstrap": [N_BOOTSTRAP],
        "tol": [Interval(float, 0, None)],
        "resample_tol": [Interval(float, 0, None)],
        "max_iter": [MAX_ITER],
        "accelerate": [Instance((bool, np.bool_))],
        "threads": [NONE, THREADS],
        "engine": [Options(("cpp", "numpy"))],
        "seed": [SEED64],
    }

    def __init__(
        self,
        interval: str = "information",
        rule: str = "fdr",
        resamples: int = 30,
        fraction: float = 0.8,
        alpha: float = 0.05,
        threshold: float | None = None,
        margin: float | None = None,
        min_batches: int = 10,
        max_candidates: int = 10,
        confidence: float = 0.95,
        n_bootstrap: int = 10_000,
        tol: float = 1e-13,
        resample_tol: float = 1e-9,
        max_iter: int = 1000,
        accelerate: bool = True,
        threads: int | None = None,
        engine: str = "cpp",
        seed: int = 0,
    ):
        self.interval = interval
        self.rule = rule
        self.resamples = resamples
        self.fraction = fraction
        self.alpha = alpha
        self.threshold = threshold
        self.margin = margin
        self.min_batches = min_batches
        self.max_candidates = max_candidates
        self.confidence = confidence
        self.n_bootstrap = n_bootstrap
        self.tol = tol
        self.resample_tol = resample_tol
        self.max_iter = max_iter
        self.accelerate = accelerate
        self.threads = threads
        self.engine = engine
        self.seed = seed

    def fit(self, data, progress: Callable[[int, int], None] | None = None) -> LowYieldDetector:
        """Estimate every machine's yield, its interval, and flag the low ones.

        ``data``: anything :func:`load_production` reads. ``progress(done, total)`` is called as
        EM fits finish (total = resamples + 1; 1 with the information interval, unless it falls back to the
        bootstrap).
        """
        self._validate_params()
        started = time.perf_counter()
        data = load_production(data)
        check_memory(self._fit_bytes(data), f"LowYieldDetector.fit on {data.source}",
                     "use interval='bootstrap'" if self.interval == "information" else "lower resamples or n_bootstrap")
        from fabguard import _core

        threads = self.threads or min(os.cpu_count() or 1, MAX_THREADS)
        total = 1 if self.interval == "information" else self.resamples + 1
        start = starting_values(data, "lsq" if self.interval == "paper" else "per_step")
        if self.interval == "paper":
            subsets = [np.arange(data.n_batches), *_core.draw_resamples(data.n_batches, self.fraction,
                                                                        self.resamples, self.seed)]
            fits = fit_subsets(data, subsets, tol=PAPER_TOL, max_iter=PAPER_MAX_ITER, stop="l2", escapes=False, threads=threads,
                               engine=self.engine, start=start,
                               progress=None if progress is None else (lambda done: progress(done, total)))
            full, resampled = fits, fits.yield_[1:]
            n_iter = fits.n_iter
        else:
            full = fit_subsets(data, [np.arange(data.n_batches)], tol=self.tol, max_iter=self.max_iter,
                               accelerate=self.accelerate, threads=threads, engine=self.engine, start=start)
            if progress is not None:
                progress(1, total)
        interval, note = self.interval, None
        if interval == "information":
            free = np.r_[np.isfinite(full.yield_[0]), np.isfinite(full.miss_rate[0])]
            if data.n_batches <= free.sum():  # a sum of fewer rank-1 terms than parameters is singular
                interval = "bootstrap"
                note = (f"{data.n_batches} batches for {int(free.sum())} parameters: too few to estimate the "
                        "information from the batches' scores; bootstrap interval used")
        if interval == "bootstrap":
            warm = (np.clip(np.nan_to_num(full.yield_[0], nan=START_MAX), START_MIN, START_MAX),
                    np.nan_to_num(full.miss_rate[0], nan=1.0))
            boot = fit_subsets(data, list(_core.draw_bootstrap(data.n_batches, self.resamples, self.seed)),
                               tol=self.resample_tol, max_iter=self.max_iter, accelerate=self.accelerate,
                               threads=threads, engine=self.engine, start=warm,
                               progress=None if progress is None else
                               (lambda done: progress(done + 1, self.resamples + 1)))
            resampled = boot.yield_
            n_iter = np.r_[full.n_iter, boot.n_iter]
        if interval == "information":
            resampled = np.empty((0, data.n_machines))
            n_iter = full.n_iter
            # a miss rate the data never informed kept its start value: the E-step used that value
            a = np.where(np.isfinite(full.miss_rate[0]), full.miss_rate[0], start[1])
            info_se = information_se(data, np.nan_to_num(full.yield_[0], nan=1.0), a, free,
                                     engine=self.engine, threads=threads)[0][: data.n_machines]

        table = data.usage_columns()
        full_yield = full.yield_[0]
        identified = data.machine_ids != NO_MACHINE
        tested = identified & (table["batches"] >= self.min_batches if self.rule == "fdr" else True)
        if self.rule == "paper":
            baseline, margin = float(np.nanmean(full_yield)), 0.0
        else:
            baseline = median(full_yield[tested])
            margin = self.margin if self.margin is not None else default_margin(full_yield[tested])
        threshold = baseline - margin if self.threshold is None else float(self.threshold)

        if self.interval == "paper":
            estimate, low, high, p = bootstrap_below(resampled, threshold, self.confidence, self.n_bootstrap,
                                                     self.seed)
            se = np.full(len(estimate), np.nan)
        elif interval == "bootstrap":
            estimate = full_yield
            se, low, high, p = t_interval(estimate, resampled, threshold, self.confidence)
        else:
            estimate, se = full_yield, info_se
            low, high, p = z_interval(estimate, se, threshold, self.confidence)
        tested &= np.isfinite(p)

        table["yield"] = estimate
        table["ci_low"], table["ci_high"] = low, high
        table["std_error"] = se
        table["p_value"] = np.where(tested, p, np.nan)
        order = np.lexsort((np.arange(len(estimate)), np.where(np.isnan(estimate), np.inf, estimate)))
        if self.rule == "paper":
            significant, low_yield = flag(estimate, p, threshold, self.alpha, self.max_candidates, order)
        else:
            q = np.full(len(p), np.nan)
            q[tested] = benjamini_hochberg(p[tested])
            table["q_value"] = q
            significant = low_yield = tested & (q <= self.alpha)
        table["significant"], table["low_yield"] = significant, low_yield
        table["status"] = np.where(low_yield, LOW, np.where(tested, NOT_FLAGGED, np.where(identified, TOO_FEW, NO_ID)))
        table["yield_full"] = full_yield
        table["miss_rate"] = full.miss_rate[0]
        table["expected_defects"] = full.expected_defects[0]
        table["resamples_used"] = np.sum(~np.isnan(resampled), axis=0)
        table = {name: column[order] for name, column in table.items()}

        self.threshold_ = threshold
        # pandas objects on first access (yield_, miss_rate_, resample_yields_)
        self._fitted = (data.machine_ids, full_yield, full.miss_rate[0], resampled)
        self.n_iter_ = n_iter
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
                "interval": interval,
                "interval_note": note,
                "rule": self.rule,
                "baseline": _finite_or_none(baseline),
                "margin": _finite_or_none(margin),
                "machines_too_few_batches": int(np.sum(table["status"] == TOO_FEW)),
                "em_iterations_full": int(n_iter[0]),
                "em_converged_full": bool(full.converged[0]),
                "em_loglik_full": float(full.loglik[0]),
                "em_iterations_resamples_median": float(np.median(n_iter[1:])) if len(n_iter) > 1 else None,
                "em_converged_resamples": (int(np.sum(fits.converged[1:])) if interval == "paper" else
                                           int(np.sum(boot.converged)) if interval == "bootstrap" else None),
                "runtime_s": round(time.perf_counter() - started, 3),
            },
            display_limit=self.max_candidates if self.rule == "fdr" else None,
        )
        self.low_yield_machines_ = self.report_.low_yield
        return self

    @property
    def yield_(self):
        """Full-data yields, a pandas Series by machine."""
        import pandas as pd

        ids, values = self._fitted[0], self._fitted[1]
        return pd.Series(values, index=ids, name="yield")

    @property
    def miss_rate_(self):
        """Full-data miss rates, a pandas Series by machine (NaN: not inspecting or never informed)."""
        import pandas as pd

        ids, values = self._fitted[0], self._fitted[2]
        return pd.Series(values, index=ids, name="miss_rate")

    @property
    def resample_yields_(self):
        """Resample yields, a pandas DataFrame (resamples x machines; none with the information interval)."""
        import pandas as pd

        ids, values = self._fitted[0], self._fitted[3]
        return pd.DataFrame(values, columns=ids)

    def _fit_bytes(self, data) -> float:
        """Peak memory of a fit, estimated from its largest arrays: the information interval's
        (2 machines)^2 matrices (and the NumPy engine's batches x 2 machines scores), or the resampled
        batch indices (drawn, then concatenated), the (resamples, machines) results and their copies, the NumPy engine's
        padded (batches, steps) arrays, and (paper mode) scipy's bootstrap of one chunk of machines."""
        r, m = self.resamples, data.n_machines
        k = data.n_batches if self.interval != "paper" else max(1.0, round(self.fraction * data.n_batches))
        total = 2 * 8 * r * k + 6 * 8 * (r + 1) * m  # the bootstrap's (information falls back to it on few batches)
        if self.interval == "information":  # the scores' outer product, scaled, factored and inverted
            info = 6 * 8 * m + 4 * 8 * (2 * m) ** 2 + (2 * 8 * k * 2 * m if self.engine == "numpy" else 0)
            total = max(info, total) if k <= 2 * m else info
        if self.engine == "numpy":
            total += 20 * 8 * k * float(np.max(np.diff(data.batch_ptr)))
        if self.interval == "paper":
            b = self.n_bootstrap
            chunk, batch = min(_BOOT_CHUNK, m), min(_BOOT_BATCH, b)
            total += 8 * (chunk + 1) * batch * r + 32 * chunk * b + 8 * chunk * min(_BOOT_BATCH, r) * r
        return float(total)


def default_margin(yields: np.ndarray) -> float:
    """The fdr rule's default margin below the median: three robust standard deviations
    (1.4826 x MAD) of the machines' yields, and at least the median's own defect rate 1 - median.

    The spread covers the healthy machines' real differences and the estimates' noise, so a machine
    is only a candidate when it stands out from the fleet; the floor keeps the threshold below
    healthy machines where the estimates barely vary. A machine 3 robust SDs low is a practical
    finding; one a hair under the fleet's typical yield is not.
    """
    y = yields[np.isfinite(yields)]
    if len(y) == 0:
        return float("nan")
    middle = median(y)
    return max(3.0 * _MAD_SCALE * median(np.abs(y - middle)), 1.0 - middle)


def median(x: np.ndarray) -> float:
    """np.nanmedian's value (the mean of the two middle values for an even count; NaN for none),
    by a sort: numpy's median imports numpy.ma on first use, 15 ms of the command line's start."""
    x = np.sort(x[~np.isnan(x)])
    n = len(x)
    if n == 0:
        return float("nan")
    return float(x[n // 2]) if n % 2 else float((x[n // 2 - 1] + x[n // 2]) / 2.0)


def z_interval(estimate: np.ndarray, se: np.ndarray, threshold: float, confidence: float):
    """(low, high, p) per machine: estimate +- z x SE clipped to [0, 1] (z the normal quantile) and the
    one-sided p-value of "yield < threshold", Phi((estimate - threshold) / SE). An infinite SE (not
    identified) gives [0, 1] and p = 0.5; NaN where the estimate or SE is NaN."""
    from statistics import NormalDist

    normal = NormalDist()
    half = normal.inv_cdf(0.5 + confidence / 2) * se
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (estimate - threshold) / se
        z = np.where(se > 0, z, np.where(estimate < threshold, -np.inf, np.inf))
    # Phi(z) by NormalDist.cdf's own formula, without a method call and numpy scalar per machine
    p = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z.tolist()])
    p = np.where(np.isfinite(estimate) & ~np.isnan(se), p, np.nan)
    with np.errstate(invalid="ignore"):
        return np.clip(estimate - half, 0.0, 1.0), np.clip(estimate + half, 0.0, 1.0), p


def t_interval(estimate: np.ndarray, resampled: np.ndarray, threshold: float, confidence: float):
    """(SE, low, high, p) per machine from bootstrap estimates (resamples x machines; NaN = absent):
    SE = their standard deviation, interval = estimate +- t x SE clipped to [0, 1], and the one-sided
    p-value of "yield < threshold", with Student t quantiles on (resamples used - 1) degrees of
    freedom. NaN where fewer than 2 resamples hold the machine."""
    from scipy import special

    used = np.sum(~np.isnan(resampled), axis=0)
    se = np.full(len(estimate), np.nan)
    ok = used >= 2
    with np.errstate(invalid="ignore"):
        se[ok] = np.nanstd(resampled[:, ok], axis=0, ddof=1)
    df = np.maximum(used - 1, 1).astype(np.float64)
    half = special.stdtrit(df, 0.5 + confidence / 2) * se
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (estimate - threshold) / se
        p = np.where(se > 0, special.stdtr(df, z), np.where(estimate < threshold, 0.0, 1.0))
    p = np.where(ok & np.isfinite(estimate), p, np.nan)
    return se, np.clip(estimate - half, 0.0, 1.0), np.clip(estimate + half, 0.0, 1.0), p


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): reject at level alpha where q <= alpha."""
    n = len(p)
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * n / np.arange(1, n + 1)
    q = np.empty(n)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def _finite_or_none(x: float):
    return float(x) if np.isfinite(x) else None


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
