"""Drift of what the line shows the serving model (case study, "Model Drift Detection"), from the inspection log.

Three views of the PASS images of one model version over a rolling window (its newest ``window`` PASS
inspections), each against a reference of the same kind:

1. **Scores**: two-sample Kolmogorov-Smirnov test of the window's anomaly scores against the model's
   validation scores. A PASS score is at most the REVIEW threshold by definition, so the validation scores
   are truncated the same way: both samples are then draws of the normal-score distribution *conditioned on
   a PASS*, and a stationary line is not flagged for ever (an untruncated reference would be).
2. **Mean score** of PASS images (the reconstruction error, for the reconstruction models): in the window
   against the (truncated) reference, and per hour for the plots.
3. **Embedding mean and variance**: the 128 values logged per inspection (the VAE's latent mean, else the
   8 x 16 heatmap grid, :func:`fabguard.anomaly.reference.grid_embedding`). Per dimension, Welch's t-test
   (mean) and the Brown-Forsythe test (variance: Levene's about the median, robust to the skewed heatmap
   cells); the 256 p-values are adjusted by Benjamini-Hochberg and the alarm is any adjusted p < alpha. Under
   the global null that is Simes' test, whose false-alarm rate is alpha for independent or positively
   dependent tests; bench/serve/drift_bench.py measures it.

The reference is the model's validation set (``drift_reference`` in the artifact). For a model exported
without one, the first ``window`` PASS inspections of the version serve as the reference and the newest
ones after them as the window: it assumes the line was healthy right after the promotion, and the answer
says so (``reference.source``). Pure logic over numpy arrays and SQLAlchemy connections: no FastAPI.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import sqlalchemy as sa

from fabguard.anomaly.reference import EMBEDDING_DIM, DriftReference
from fabguard.errors import InputError
from fabguard.serve import db

SCORE_TEST = "two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp), PASS scores vs validation scores <= REVIEW"
LATENT_TEST = ("per dimension: Welch t-test (mean) and Brown-Forsythe (variance); Benjamini-Hochberg over "
                  f"{2 * EMBEDDING_DIM} p-values")


def encode_latent(vector) -> bytes:
    """One inspection's 128 values as ``inspections.latent`` stores them: float32 little-endian."""
    array = np.asarray(vector, dtype="<f4")
    if array.shape != (EMBEDDING_DIM,) or not np.isfinite(array).all():
        raise InputError(f"latent must be {EMBEDDING_DIM} finite numbers, got shape {array.shape}")
    return array.tobytes()


def decode_latents(blobs) -> np.ndarray:
    """(N, 128) float32 from ``inspections.latent`` values; a blob of another length is refused."""
    blobs = list(blobs)
    bad = [i for i, b in enumerate(blobs) if len(b) != 4 * EMBEDDING_DIM]
    if bad:
        raise InputError(f"inspections.latent: {len(bad)} value(s) are not {EMBEDDING_DIM} float32 "
                         f"({4 * EMBEDDING_DIM} bytes), e.g. row {bad[0]} of the window")
    return np.frombuffer(b"".join(blobs), "<f4").reshape(len(blobs), EMBEDDING_DIM)


@dataclass(frozen=True)
class Baseline:
    """What the window is compared with: PASS-conditional scores and embeddings, and where they come from."""

    source: str  # "validation" or "first_window"
    scores: np.ndarray
    embeddings: np.ndarray | None  # (k, 128); None: none logged
    embedding: str | None  # "latent" or "heatmap_grid" (validation); None for the first window
    truncated_at: float | None  # the REVIEW threshold the validation scores were cut at
    note: str

    @classmethod
    def from_validation(cls, reference: DriftReference, review: float) -> "Baseline":
        """The validation images a PASS decision would have kept (score <= ``review``)."""
        keep = reference.scores <= review
        return cls("validation", reference.scores[keep], reference.embeddings[keep[:len(reference.embeddings)]],
                   reference.embedding, review,
                   f"the model's validation images with score <= the REVIEW threshold ({int(keep.sum())} of "
                   f"{len(keep)}; embeddings of {int(keep[:len(reference.embeddings)].sum())})")

    def as_dict(self) -> dict:
        return {"source": self.source, "n_scores": len(self.scores),
                "n_embeddings": 0 if self.embeddings is None else len(self.embeddings),
                "embedding": self.embedding, "truncated_at": self.truncated_at,
                "mean_score": float(self.scores.mean()) if len(self.scores) else None, "note": self.note}


def score_test(window: np.ndarray, reference: np.ndarray, alpha: float, min_window: int) -> dict:
    """KS test of the window's PASS scores against the reference's (None p-value below ``min_window``)."""
    result = {"test": SCORE_TEST, "n_window": len(window), "n_reference": len(reference),
              "window_mean": float(np.mean(window)) if len(window) else None,
              "reference_mean": float(np.mean(reference)) if len(reference) else None,
              "statistic": None, "pvalue": None, "alarm": False}
    if len(window) < min_window or len(reference) < 2:
        return {**result, "status": f"waiting: {len(window)} PASS scores in the window, {min_window} needed"}
    from scipy import stats  # here: importing scipy.stats costs the service's start a second

    ks = stats.ks_2samp(window, reference)
    return {**result, "statistic": float(ks.statistic), "pvalue": float(ks.pvalue),
            "alarm": bool(ks.pvalue < alpha), "status": "ok"}


def latent_test(window: np.ndarray | None, reference: np.ndarray | None, alpha: float, min_window: int) -> dict:
    """Per-dimension mean and variance shift of the window's embeddings against the reference's.

    ``pvalue``: the smallest Benjamini-Hochberg adjusted p-value; ``mean_shift``: root mean square over the
    dimensions of (window mean - reference mean) / reference standard deviation; ``variance_ratio``:
    geometric mean over the dimensions of window variance / reference variance (dimensions with a zero
    reference spread are left out of both; a dimension constant in both samples has no p-value)."""
    n_window = 0 if window is None else len(window)
    n_reference = 0 if reference is None else len(reference)
    result = {"test": LATENT_TEST, "n_window": n_window, "n_reference": n_reference, "pvalue": None,
              "shifted_dimensions": None, "mean_shift": None, "variance_ratio": None, "alarm": False}
    if n_reference < 2:
        return {**result, "status": "no reference embeddings"}
    if n_window < min_window:
        return {**result, "status": f"waiting: {n_window} PASS embeddings logged in the window, {min_window} needed"}
    from scipy import stats

    window, reference = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    with warnings.catch_warnings():  # a dimension constant in both samples gives NaN, handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        means = stats.ttest_ind(window, reference, axis=0, equal_var=False).pvalue
        spreads = stats.levene(window, reference, center="median", axis=0).pvalue
    p = np.concatenate([means, spreads])
    tested = np.isfinite(p)
    if not tested.any():
        return {**result, "status": "every dimension is constant in both samples"}
    adjusted = stats.false_discovery_control(p[tested], method="bh")
    ref_var, win_var = reference.var(0, ddof=1), window.var(0, ddof=1)
    spread = ref_var > 0
    shift = (window.mean(0) - reference.mean(0))[spread] / np.sqrt(ref_var[spread])
    both = spread & (win_var > 0)
    return {**result, "pvalue": float(adjusted.min()), "shifted_dimensions": int((adjusted < alpha).sum()),
            "mean_shift": float(np.sqrt(np.mean(shift ** 2))) if spread.any() else None,
            "variance_ratio": float(np.exp(np.mean(np.log(win_var[both] / ref_var[both])))) if both.any() else None,
            "alarm": bool(adjusted.min() < alpha), "status": "ok"}


def compare(scores: np.ndarray, embeddings: np.ndarray | None, baseline: Baseline, alpha: float,
            min_window: int) -> dict:
    """Both tests of one window of PASS inspections against ``baseline`` (in process: the bench uses it)."""
    score = score_test(np.asarray(scores, np.float64), baseline.scores, alpha, min_window)
    latent = latent_test(embeddings, baseline.embeddings, alpha, min_window)
    return {"alpha": alpha, "reference": baseline.as_dict(), "score": score, "latent": latent,
            "alarm": score["alarm"] or latent["alarm"]}


# --- the inspection log -----------------------------------------------------------------------------------
def _pass_rows(connection, version: str, limit: int, newest: bool, skip: int = 0) -> list:
    t = db.inspections
    order = t.c.created_at.desc() if newest else t.c.created_at.asc()
    query = (sa.select(t.c.created_at, t.c.anomaly_score, t.c.latent)
             .where(t.c.model_version == version, t.c.decision == "PASS")
             .order_by(order, t.c.id).offset(skip).limit(limit))
    return connection.execute(query).all()


def _arrays(rows) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.array([r.anomaly_score for r in rows], np.float64)
    blobs = [r.latent for r in rows if r.latent is not None]
    return scores, decode_latents(blobs) if blobs else None


def assess(engine: sa.Engine, version: str, review: float, reference: DriftReference | None, window: int,
           min_window: int, alpha: float, hours: int = 24) -> dict:
    """The drift report of ``version`` (REVIEW threshold ``review``) from the log: window, reference, both
    tests, and the mean PASS score per hour over the last ``hours``."""
    if window < min_window or min_window < 2:
        raise InputError(f"drift window {window} must be >= min window {min_window} >= 2")
    with engine.connect() as c:
        if reference is not None:
            baseline = Baseline.from_validation(reference, review)
            rows = _pass_rows(c, version, window, newest=True)
        else:
            total = c.execute(sa.select(sa.func.count()).select_from(db.inspections).where(
                db.inspections.c.model_version == version, db.inspections.c.decision == "PASS")).scalar()
            first = _pass_rows(c, version, window, newest=False)
            scores, embeddings = _arrays(first)
            baseline = Baseline("first_window", scores, embeddings, None, None,
                                f"the model carries no validation reference: its first {len(first)} PASS "
                                f"inspections (of {window} wanted) are the reference, assuming the line was "
                                "healthy right after the promotion; the window is the newest PASS inspections "
                                "after them")
            rows = _pass_rows(c, version, min(window, max(total - window, 0)), newest=True) if total > window else []
        history = pass_score_history(c, version, hours)
    scores, embeddings = _arrays(rows)
    report = compare(scores, embeddings, baseline, alpha, min_window)
    times = [r.created_at for r in rows]
    report.update(model_version=version, computed_at=datetime.now(timezone.utc),
                  window={"size": window, "min_size": min_window, "n": len(rows),
                          "n_embeddings": 0 if embeddings is None else len(embeddings),
                          "first_at": min(times) if times else None, "last_at": max(times) if times else None},
                  history=history)
    return report


def hour_bucket(connection, column):
    """SQL expression of ``column`` truncated to the hour (SQLite: text 'YYYY-MM-DD HH:00:00')."""
    if connection.dialect.name == "postgresql":
        return sa.func.date_trunc("hour", column)
    return sa.func.strftime("%Y-%m-%d %H:00:00", column)


def as_hour(value) -> datetime:
    """A bucket from :func:`hour_bucket` as an aware UTC datetime (the log stores UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def pass_score_history(connection, version: str, hours: int) -> list[dict]:
    """Mean and count of PASS scores of ``version`` per hour, oldest first, over the last ``hours``."""
    t = db.inspections
    hour = hour_bucket(connection, t.c.created_at).label("hour")
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    rows = connection.execute(
        sa.select(hour, sa.func.avg(t.c.anomaly_score), sa.func.count())
        .where(t.c.model_version == version, t.c.decision == "PASS", t.c.created_at >= since)
        .group_by(hour).order_by(hour)).all()
    return [{"hour": as_hour(h), "mean_score": float(mean), "n": int(n)} for h, mean, n in rows]
