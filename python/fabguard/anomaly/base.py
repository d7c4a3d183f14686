"""The detector interface shared by all models, and the PASS / REVIEW / REJECT thresholds.

A detector is fitted on normal images only. ``fit`` splits them (seeded) into a training part and a
validation part; the validation part sets the decision thresholds (and stops VAE training early). All
scoring runs through one torch module, ``model_``, that maps an RGB batch (N, 3, S, S) in [0, 1] to
``(scores (N,), heatmaps (N, S, S))``; the same module is exported to ONNX, so the artifact computes
exactly what ``score`` computes.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from fabguard.anomaly.images import check_batch, fingerprint, split
from fabguard.errors import InputError
from fabguard.outputs import atomic_path

DECISIONS = ("PASS", "REVIEW", "REJECT")
FORMAT_VERSION = 1


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

    def decide(self, scores) -> np.ndarray:
        """PASS / REVIEW / REJECT per score."""
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise InputError("cannot decide on NaN or infinite scores")
        level = (scores > self.review).astype(int) + (scores > self.reject).astype(int)
        return np.asarray(DECISIONS)[level]

    def as_dict(self) -> dict:
        return asdict(self)


class Detector(BaseEstimator, ABC):
    """Base of the PCA, VAE and PatchCore detectors: ``fit(normal images)``, ``score``, ``save`` / ``load``.

    Subclasses set ``kind``, take their hyper-parameters (plus the common ones below) in ``__init__``
    and implement ``_fit`` (training -> scoring module), ``_new_module`` (an untrained module of the
    right shapes, for ``load``) and ``reference``.
    """

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type["Detector"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Detector.registry[cls.kind] = cls

    # --- what subclasses provide -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: np.ndarray, val: np.ndarray, progress: bool):
        """Train on ``train`` (``val`` may steer training) and return the scoring module."""

    @abstractmethod
    def _new_module(self, state: dict):
        """An untrained scoring module whose shapes match ``state`` (a saved state dict)."""

    @abstractmethod
    def reference(self, images: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """What the model holds as the normal counterpart of each image, (N, 3, S, S): for the error gallery."""

    # --- shared behaviour ----------------------------------------------------------------------------
    def fit(self, images: np.ndarray, progress: bool = False) -> "Detector":
        """Fit on normal images (N, 3, S, S) in [0, 1] and calibrate the decision thresholds."""
        images = check_batch(images, self.input_size, "training images")
        train, val = split(len(images), self.val_fraction, self.seed)
        torch.manual_seed(self.seed)
        self.model_ = self._fit(images[train], images[val], progress).eval()
        self.val_scores_ = self.score(images[val])[0]
        self.thresholds_ = Thresholds.calibrate(self.val_scores_, self.review_quantile, self.reject_quantile)
        if self.review_quantile < 1 and self.thresholds_.review >= self.val_scores_.max():
            warnings.warn(f"the REVIEW threshold is the largest of the {len(val)} validation scores: too few "
                          f"normal images for a {self.review_quantile} quantile (it needs more than "
                          f"{1 / (1 - self.review_quantile):.0f}), so new normal images will be flagged more "
                          f"often than {1 - self.review_quantile:.1%}", stacklevel=2)
        self.fingerprint_ = fingerprint(images)
        self.n_train_, self.n_val_ = len(train), len(val)
        return self

    def score(self, images: np.ndarray, batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores (N,) and heatmaps (N, S, S) of an RGB batch (N, 3, S, S) in [0, 1]."""
        self._check_fitted()
        images = check_batch(images, self.input_size)
        scores, heatmaps = [], []
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc=f"scoring ({self.kind})",
                              disable=not progress, leave=False):
                s, h = self.model_(torch.from_numpy(images[start:start + batch_size]))
                scores.append(s.numpy())
                heatmaps.append(h.numpy())
        return np.concatenate(scores), np.concatenate(heatmaps)

    def decide(self, scores) -> np.ndarray:
        self._check_fitted()
        return self.thresholds_.decide(scores)

    def metadata(self) -> dict:
        """What an artifact must carry besides the graph: thresholds, version, input size, data fingerprint."""
        from fabguard import __version__

        self._check_fitted()
        return {
            "fabguard_version": __version__,
            "format_version": FORMAT_VERSION,
            "model": self.kind,
            "params": self.get_params(),
            "input_size": self.input_size,
            "input": "images: float32 (N, 3, S, S) RGB in [0, 1]",
            "thresholds": self.thresholds_.as_dict(),
            "train_fingerprint": self.fingerprint_,
            "n_train": self.n_train_,
            "n_val": self.n_val_,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted detector to one file (torch format, tensors and plain values only)."""
        state = {"metadata": self.metadata(), "module": self.model_.state_dict(),
                 "val_scores": self.val_scores_.tolist(), "extra": self._extra_state()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @staticmethod
    def load(path: str | os.PathLike) -> "Detector":
        """Read a detector written by ``save`` (any kind)."""
        from fabguard.anomaly import patchcore, pca, vae  # noqa: F401  (registers every detector kind)

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            meta = state["metadata"]
            cls = Detector.registry[meta["model"]]
        except FileNotFoundError:
            raise InputError(f"{path}: no such model file") from None
        except Exception as exc:
            raise InputError(f"{path}: not a fabguard anomaly model ({type(exc).__name__}: {exc})") from None
        if meta["format_version"] != FORMAT_VERSION:
            raise InputError(f"{path}: model format {meta['format_version']} is not {FORMAT_VERSION}")
        detector = cls(**meta["params"])
        detector.model_ = detector._new_module(state["module"])
        detector.model_.load_state_dict(state["module"])
        detector.model_.eval()
        detector.thresholds_ = Thresholds(**meta["thresholds"])
        detector.fingerprint_ = meta["train_fingerprint"]
        detector.n_train_, detector.n_val_ = meta["n_train"], meta["n_val"]
        detector.val_scores_ = np.asarray(state["val_scores"])
        detector._load_extra_state(state["extra"])
        return detector

    def _extra_state(self) -> dict:
        """Fitted values beyond the module (e.g. training history), plain Python types."""
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise InputError(f"the {self.kind} detector is not fitted: call fit() or load a saved model")


load_detector = Detector.load

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's "L" mode


def to_gray(images):
    """(N, 3, S, S) RGB torch batch -> (N, S, S) luma; exact for replicated grayscale files."""
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(1)
