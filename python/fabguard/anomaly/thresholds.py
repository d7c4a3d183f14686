"""The PASS / REVIEW / REJECT thresholds: calibrated at training, read back by the serving side.

Kept apart from the detectors (no torch, no scikit-learn), so that :mod:`fabguard.anomaly.runtime` and the
service load in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from fabguard.errors import InputError, ModelFileError
from fabguard.params import Interval

DECISIONS = ("PASS", "REVIEW", "REJECT")
MIN_SIZE = 16  # below this no detector has anything to model (PatchCore's feature grid is 1/8 of it)


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds above which an image goes to REVIEW or is REJECTed.

    Each is a quantile of the scores of held-out *normal* images: quantile q means that at most a
    fraction 1 - q of normal images is flagged (the target false-alarm rate). The threshold is an
    observed validation score ("higher" quantile) and flagging needs a score strictly above it, so a
    validation set without anomalies can never make every image fail.
    """

    review: float
    reject: float
    review_quantile: float
    reject_quantile: float
    n_val: int

    @classmethod
    def calibrate(cls, normal_scores, review_quantile: float = 0.95, reject_quantile: float = 0.995) -> "Thresholds":
        scores = np.asarray(normal_scores, dtype=np.float64).ravel()
        if scores.size == 0:
            raise InputError("cannot calibrate thresholds: no validation scores")
        if not np.isfinite(scores).all():
            raise InputError("cannot calibrate thresholds: validation scores contain NaN or infinite values")
        if not 0.0 < review_quantile <= reject_quantile <= 1.0:
            raise InputError(
                f"need 0 < review quantile <= reject quantile <= 1, got {review_quantile} and {reject_quantile}"
            )
        return cls(
            review=float(np.quantile(scores, review_quantile, method="higher")),
            reject=float(np.quantile(scores, reject_quantile, method="higher")),
            review_quantile=review_quantile,
            reject_quantile=reject_quantile,
            n_val=int(scores.size),
        )

    @classmethod
    def from_dict(cls, data, where: str) -> "Thresholds":
        """Thresholds read from a model file or artifact (``where``), checked: a crafted file is refused."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ModelFileError(f"{where}: thresholds must be an object with keys {', '.join(names)}; got {data!r}")
        for name in names:
            value, kind = data[name], int if name == "n_val" else float
            if not Interval(kind, 1 if kind is int else None, None).accepts(value):
                raise ModelFileError(f"{where}: threshold {name!r} must be a finite number"
                                     f"{' >= 1' if kind is int else ''}; got {value!r}")
        if not (0 < data["review_quantile"] <= data["reject_quantile"] <= 1 and data["review"] <= data["reject"]):
            raise ModelFileError(f"{where}: thresholds out of order (need 0 < review quantile <= reject quantile "
                                 f"<= 1 and review <= reject): {data}")
        return cls(**{n: (int if n == "n_val" else float)(data[n]) for n in names})

    def decide(self, scores) -> np.ndarray:
        """PASS / REVIEW / REJECT per score."""
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise InputError("cannot decide on NaN or infinite scores")
        level = (scores > self.review).astype(int) + (scores > self.reject).astype(int)
        return np.asarray(DECISIONS)[level]

    def as_dict(self) -> dict:
        return asdict(self)
