"""Baselines a yield engineer already uses, with the same report as the EM detector.

- :class:`GLMYieldEstimator`: binomial GLM with log link on machine-use indicators, i.e. the same
  multiplicative yield model as the EM (batch yield = product of its machines' yields) fitted to
  final good pieces only, without the inspection staging.
- :class:`CommonalityAnalysis`: per machine, a one-sided Fisher's exact test of used / not used
  against low-yield / normal batches, with Benjamini-Hochberg across machines.
"""

from __future__ import annotations

import numpy as np

from fabguard.machine_yield._forms import PROBABILITY_OPEN, YIELD
from fabguard.machine_yield.data import ProductionData, load_production
from fabguard.machine_yield.report import YieldReport, flag
from fabguard.params import NONE, POSITIVE_INT, Estimator, check_memory


def _presence(data: ProductionData):
    """(batches, machines) 0/1 sparse matrix: machine used in the batch (once, however often)."""
    from scipy import sparse

    x = sparse.coo_matrix((np.ones(data.n_rows), (data.batch_of_row, data.machine)),
                          shape=(data.n_batches, data.n_machines)).tocsr()
    x.data[:] = 1.0
    return x


class GLMYieldEstimator(Estimator):
    """Binomial GLM, log link, no intercept: final good ~ Binomial(pieces at start, prod_m P_m).

    Maximum likelihood under ln P <= 0 (L-BFGS-B); Wald CIs from the Fisher information; a
    one-sided Wald test of ln P < ln threshold. The threshold defaults to the mean of all machine
    yields. After :meth:`fit`: ``report_``, ``yield_``, ``threshold_``.
    """

    _parameter_constraints = {
        "alpha": [PROBABILITY_OPEN],
        "threshold": [NONE, YIELD],
        "max_candidates": [POSITIVE_INT],
        "confidence": [PROBABILITY_OPEN],
    }

    def __init__(self, alpha: float = 0.05, threshold: float | None = None, max_candidates: int = 10,
                 confidence: float = 0.95):
        self.alpha = alpha
        self.threshold = threshold
        self.max_candidates = max_candidates
        self.confidence = confidence

    def fit(self, data) -> "GLMYieldEstimator":
        from scipy import special
        from scipy.optimize import minimize

        self._validate_params()
        data = load_production(data)
        # the dense Fisher information, its pseudo-inverse and their workspace
        check_memory(4 * 8 * float(data.n_machines) ** 2, f"GLMYieldEstimator.fit on {data.source} "
                     f"({data.n_machines} machines)", "use the EM method (--method em)")
        x = _presence(data)
        n = data.start_pieces.astype(np.float64)
        good = data.final_good.astype(np.float64)
        bad = n - good

        def nll(q):
            eta = x @ q
            log_bad = np.log(-np.expm1(np.minimum(eta, -1e-300)))  # ln(1 - exp(eta)), stable near 0
            value = -(good @ eta + bad @ log_bad)
            ratio = np.exp(eta - log_bad)  # exp(eta) / (1 - exp(eta))
            return value, -(x.T @ (good - bad * ratio))

        q0 = np.full(data.n_machines, -1e-3)
        fit = minimize(nll, q0, jac=True, method="L-BFGS-B", bounds=[(None, -1e-12)] * data.n_machines,
                       options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 10_000})
        q = fit.x
        mu = np.exp(x @ q)
        weight = n * mu / np.maximum(1.0 - mu, 1e-300)  # Fisher weights of the log link
        info = (x.T @ x.multiply(weight[:, None])).toarray()
        se = np.sqrt(np.clip(np.diag(np.linalg.pinv(info, hermitian=True)), 0.0, None))
        estimate = np.exp(q)
        threshold = float(np.mean(estimate)) if self.threshold is None else float(self.threshold)
        z = special.ndtri(0.5 + self.confidence / 2)  # the normal quantile, without importing scipy.stats
        with np.errstate(divide="ignore", invalid="ignore"):
            p = special.ndtr((q - np.log(threshold)) / se)

        table = data.machine_usage()
        table["yield"] = estimate
        table["ci_low"] = np.exp(q - z * se)
        table["ci_high"] = np.minimum(np.exp(q + z * se), 1.0)
        table["p_value"] = p
        table["std_error_log"] = se
        order = np.argsort(estimate, kind="stable")
        table["significant"], table["low_yield"] = flag(estimate, p, threshold, self.alpha, self.max_candidates, order)
        self.threshold_ = threshold
        self.yield_ = table.set_index("machine")["yield"]
        self.report_ = YieldReport(
            method="glm", machines=table.iloc[order].reset_index(drop=True), threshold=threshold, alpha=self.alpha,
            params=self.get_params(),
            summary={"source": data.source, "batches": data.n_batches, "machines": data.n_machines,
                     "converged": bool(fit.success), "iterations": int(fit.nit)},
        )
        return self


class CommonalityAnalysis(Estimator):
    """Which machines do the low-yield batches have in common?

    A batch is low-yield when its yield is at or below the ``low_batch_quantile`` of all batch
    yields. Per machine, the one-sided Fisher's exact test (the hypergeometric upper tail) of
    "low-yield batches are over-represented among the batches that used it", then
    Benjamini-Hochberg q-values; flagged: q < alpha, smallest p first. The report's ``yield`` is
    the mean yield of the batches that used the machine (descriptive; there is no per-machine
    model) and its ``threshold`` the batch-yield cut-off. After :meth:`fit`: ``report_``, ``cutoff_``.
    """

    _parameter_constraints = {
        "low_batch_quantile": [PROBABILITY_OPEN],
        "alpha": [PROBABILITY_OPEN],
        "max_candidates": [POSITIVE_INT],
    }

    def __init__(self, low_batch_quantile: float = 0.2, alpha: float = 0.05, max_candidates: int = 10):
        self.low_batch_quantile = low_batch_quantile
        self.alpha = alpha
        self.max_candidates = max_candidates

    def fit(self, data) -> "CommonalityAnalysis":
        from scipy import stats

        self._validate_params()
        data = load_production(data)
        x = _presence(data)
        batch_yield = data.batch_yield
        cutoff = float(np.quantile(batch_yield, self.low_batch_quantile))
        low = batch_yield <= cutoff
        used = np.asarray(x.sum(axis=0)).ravel()
        used_low = np.asarray(x[low].sum(axis=0)).ravel()
        p = stats.hypergeom.sf(used_low - 1, data.n_batches, low.sum(), used)
        q = stats.false_discovery_control(p, method="bh")
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = (used_low * (data.n_batches - used - low.sum() + used_low)) / (
                (used - used_low) * (low.sum() - used_low))

        table = data.machine_usage()
        table["yield"] = np.asarray(x.T @ batch_yield).ravel() / used
        table["ci_low"] = table["ci_high"] = np.nan
        table["p_value"], table["q_value"] = p, q
        table["low_batches"] = used_low.astype(np.int64)
        table["odds_ratio"] = odds
        order = np.lexsort((table["yield"].to_numpy(), p))
        significant = q < self.alpha
        low_yield = np.zeros(len(p), dtype=bool)
        low_yield[order[significant[order]][: self.max_candidates]] = True
        table["significant"], table["low_yield"] = significant, low_yield
        self.cutoff_ = cutoff
        self.report_ = YieldReport(
            method="commonality", machines=table.iloc[order].reset_index(drop=True), threshold=cutoff, alpha=self.alpha,
            params=self.get_params(),
            summary={"source": data.source, "batches": data.n_batches, "machines": data.n_machines,
                     "low_batches": int(low.sum())},
        )
        return self
