"""EM fits of machine yields and inspection miss rates on batch subsets.

Every subset (the full data, a bootstrap resample, or one of the paper's 80% resamples) is fitted
with counts from its own batches only; a batch repeated in a bootstrap resample counts as often.
All subsets start from the same values: the full-data start (paper mode), or the full-data
estimate (bootstrap: a warm start, since a resample's optimum lies near it).

Stop rules: ``"loglik"`` stops when the relative change of the log-likelihood (between SQUAREM
cycles, or EM updates without acceleration) is at most ``tol``; ``"l2"`` is the authors' plain EM
stopped on the L2 change of the yield vector.

``escapes`` (default) models the defects that escape every inspection: the final good pieces are
good or such escapes. The paper's model counts them as good, which biases yields upwards (+0.028
for machines at 0.4 in the accuracy bench) and miss rates downwards; paper mode keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fabguard.errors import InputError
from fabguard.machine_yield.data import ProductionData
from fabguard.params import Options, check

#: Starting yields are kept inside [START_MIN, START_MAX]. A yield of exactly 1 is absorbing (the
#: machine never receives a share of the defects), and the bounded least squares puts many
#: machines exactly on log P = 0.
START_MIN, START_MAX = 1e-6, 1.0 - 1e-6


@dataclass(frozen=True)
class EmFits:
    """Results of fitting R subsets; arrays are (R, n_machines) unless noted."""

    yield_: np.ndarray  # NaN where the machine is absent from the subset
    miss_rate: np.ndarray  # NaN where the machine does not inspect or never saw a defect
    expected_defects: np.ndarray
    n_iter: np.ndarray  # (R,) EM updates
    converged: np.ndarray  # (R,) bool
    loglik: np.ndarray  # (R,) log-likelihood at the last E-step


def initial_yields(data: ProductionData) -> np.ndarray:
    """Least squares of ln(batch yield) on machine-presence indicators with ln P <= 0, by
    L-BFGS-B from ln P = 0 (the authors' solver).

    A machine used twice in a batch counts once. A batch with no good piece left would give ln 0;
    its yield is taken as half a piece over the pieces at start. The paper mode's start.
    """
    from scipy import sparse
    from scipy.optimize import minimize

    rows = data.batch_of_row
    presence = sparse.coo_matrix((np.ones(data.n_rows), (rows, data.machine)),
                                 shape=(data.n_batches, data.n_machines)).tocsr()
    presence.data[:] = 1.0  # a machine used twice in a batch was summed by the conversion
    target = np.log(np.maximum(data.final_good, 0.5) / data.start_pieces)

    def loss(q):
        r = presence @ q - target
        return r @ r, 2.0 * (presence.T @ r)

    fit = minimize(loss, np.zeros(data.n_machines), jac=True, method="L-BFGS-B",
                   bounds=[(None, 0.0)] * data.n_machines, options={"ftol": 1e-12, "gtol": 1e-9, "maxiter": 10_000})
    return np.clip(np.exp(fit.x), START_MIN, START_MAX)


def initial_miss_rates(data: ProductionData) -> np.ndarray:
    """F / (F + B): F = defects detected after the machine's first use in a batch, B = defects it
    detected itself. Machines with neither start at 1."""
    first = data.first_use
    f = np.bincount(data.machine[first], weights=data.detected_after[first], minlength=data.n_machines)
    b = np.bincount(data.machine, weights=data.defects, minlength=data.n_machines)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(f + b > 0, f / (f + b), 1.0)


def per_step_yields(data: ProductionData) -> np.ndarray:
    """exp(mean over the machine's uses of ln(batch yield) / steps of the batch): every step of a
    batch gets its batch's mean per-step yield, and a machine the geometric mean of its batches'.

    fabguard's start: O(rows), no optimiser. On 500 x 5000, 250 x 2000 and 50 x 1000 simulated
    fleets SQUAREM reached the default stop in 339 / 267 / 246 updates from it, 341 / 381 / 105 from
    the least squares of :func:`initial_yields` (which the paper mode keeps). Half a good piece
    stands in for none, and the values are clipped to [START_MIN, START_MAX], as there."""
    steps = np.diff(data.batch_ptr)
    per_step = np.log(np.maximum(data.final_good, 0.5) / data.start_pieces) / steps
    uses = np.bincount(data.machine, minlength=data.n_machines)
    total = np.bincount(data.machine, weights=per_step[data.batch_of_row], minlength=data.n_machines)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.exp(np.where(uses > 0, total / uses, 0.0)), START_MIN, START_MAX)


def starting_values(data: ProductionData, yields: str = "per_step") -> tuple[np.ndarray, np.ndarray]:
    """Starting yields (``"per_step"``: :func:`per_step_yields`, fabguard's; ``"lsq"``:
    :func:`initial_yields`, the authors') and miss rates (:func:`initial_miss_rates`)."""
    check("yields", yields, Options(("per_step", "lsq")), owner="starting_values")
    return per_step_yields(data) if yields == "per_step" else initial_yields(data), initial_miss_rates(data)


def fit_subsets(
    data: ProductionData,
    subsets: Sequence[np.ndarray],
    *,
    tol: float = 1e-13,
    max_iter: int = 1000,
    accelerate: bool = True,
    stop: str = "loglik",
    escapes: bool = True,
    threads: int = 1,
    engine: str = "cpp",
    start: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EmFits:
    """Fit the EM on every subset of batch indices.

    A subset may repeat a batch (a bootstrap resample). ``stop``, ``tol``, ``max_iter`` (EM updates),
    ``accelerate`` (SQUAREM, with ``stop="loglik"``) and ``escapes`` are described in the module
    docstring. engine ``"cpp"`` runs the C++ core on ``threads`` threads (identical results for any
    count); ``"numpy"`` runs the plain NumPy reference (one thread). ``start`` = (yields, miss rates)
    overrides the starting values (default :func:`starting_values`). ``progress(done)`` is called
    as subsets finish. Raises InputError for data written to since validation and for a subset that
    is empty or holds an index outside the batches.
    """
    check("engine", engine, Options(("cpp", "numpy")), owner="fit_subsets")
    check("stop", stop, Options(("loglik", "l2")), owner="fit_subsets")
    data.check()
    subsets = [np.ascontiguousarray(s, dtype=np.int64).reshape(-1) for s in subsets]
    for i, s in enumerate(subsets):
        if len(s) == 0 or s.min() < 0 or s.max() >= data.n_batches:
            raise InputError(f"fit_subsets: subset {i} is empty or holds a batch index outside [0, {data.n_batches})")
    p0, a0 = start if start is not None else starting_values(data)
    if engine == "cpp":
        from fabguard import _core

        ptr = np.r_[0, np.cumsum([len(s) for s in subsets])].astype(np.int64)
        out = _core.fit_em(
            data.core, ptr, np.concatenate(subsets), np.ascontiguousarray(p0, np.float64),
            np.ascontiguousarray(a0, np.float64), tol=tol, max_iter=max_iter, accelerate=accelerate, stop=stop,
            escapes=escapes, threads=threads, progress=progress,
        )
        return EmFits(out["yield"], out["miss_rate"], out["expected_defects"], out["n_iter"], out["converged"],
                      out["loglik"])
    from fabguard.machine_yield.em_numpy import fit_em_numpy

    return fit_em_numpy(data, subsets, p0, a0, tol=tol, max_iter=max_iter, accelerate=accelerate, stop=stop,
                        escapes=escapes, progress=progress)


def information_se(data: ProductionData, p: np.ndarray, a: np.ndarray, free: np.ndarray, *,
                   engine: str = "cpp", threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(standard errors, gradient) of the parameters kept by ``free`` (2 x machines: yields, then
    miss rates), escapes model at (p, a), from the Fisher information estimated by the outer product
    of the per-batch scores, OPG = sum_batches s_b s_b^T (Berndt, Hall, Hall and Hausman 1974; the
    scores by Fisher's identity from one E-step). The batches are independent given the parameters,
    so at the maximum OPG estimates the information that resampling batches would show, without
    refitting. SE = sqrt(diag(OPG^-1)); NaN where ``free`` is False, inf where the data leave the
    parameter unidentified (OPG singular in its direction). ``threads`` share the inversion (the
    same result for any count)."""
    check("engine", engine, Options(("cpp", "numpy")), owner="information_se")
    free_index = np.where(free, np.cumsum(free) - 1, -1).astype(np.int64)
    p, a = np.ascontiguousarray(p, np.float64), np.ascontiguousarray(a, np.float64)
    if engine == "cpp":
        from fabguard import _core

        out = _core.score_outer_product(data.core, p, a, free_index)
        grad, opg = out["grad"], out["opg"]
    else:
        from fabguard.machine_yield.em_numpy import score_outer_product_numpy

        grad, opg, _ = score_outer_product_numpy(data, p, a, free_index)
    se = np.full(len(free), np.nan)
    se[free] = np.sqrt(_inverse_diagonal(opg, threads))
    return se, grad


def _inverse_diagonal(info: np.ndarray, threads: int) -> np.ndarray:
    """diag(info^-1) of a symmetric positive semi-definite matrix, inf for directions it leaves free.

    The C++ core's Cholesky of the matrix scaled to unit diagonal (the yields' and miss rates'
    scores differ by orders of magnitude; its sums run in a fixed order, so the result is the same
    for any thread count). Where that finds the matrix singular to working precision, the
    eigenvalues at or below the numerical-rank cut (largest x size x machine epsilon, as numpy's
    matrix_rank) are the null space, and a parameter with a share of it above 1e-8 gets inf."""
    from fabguard import _core

    out = np.full(len(info), np.inf)
    diag = np.diag(info).copy()
    keep = diag > 0
    if not keep.any():
        return out
    sub = np.ascontiguousarray(info[np.ix_(keep, keep)])
    var = _core.inverse_diagonal(sub, threads)
    if var is None:
        scale = 1.0 / np.sqrt(diag[keep])
        w, v = np.linalg.eigh(sub * scale[:, None] * scale[None, :])
        null = w <= w.max() * len(w) * np.finfo(float).eps
        var = np.where((v[:, null] ** 2).sum(axis=1) > 1e-8, np.inf,
                       (v[:, ~null] ** 2 / w[~null]).sum(axis=1) * scale**2)
    out[keep] = var
    return out
