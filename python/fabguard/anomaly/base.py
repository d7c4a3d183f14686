"""The detector interface shared by all models.

A detector is fitted on normal images only. ``fit`` splits them (seeded) into a training part and a
validation part; the validation part sets the decision thresholds (and stops VAE training early). All
scoring runs through one torch module, ``model_``, that maps an RGB batch (N, 3, S, S) in [0, 1] to
``(scores (N,), heatmaps (N, S, S))``, followed by the posterior means ``(N, latent_dim)`` for a detector
with a latent space (``has_latent``); the same module is exported to ONNX, so the artifact computes
exactly what ``score`` and ``latent`` compute.

A new detector is one module holding a :class:`Detector` subclass plus one line in
:mod:`fabguard.registry`: the CLI builds its ``--model`` choices and the detector's own flags
(``cli_options``) from the registry, and loading and evaluation find the class there.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from fabguard import registry
from fabguard.anomaly.images import check_batch, fingerprint, split
from fabguard.anomaly.reference import EMBEDDING_DIM, REFERENCE_ROWS, DriftReference, grid_embedding
from fabguard.anomaly.thresholds import DECISIONS, MIN_SIZE, Thresholds  # noqa: F401  (part of this module's API)
from fabguard.errors import InputError, ModelFileError
from fabguard.outputs import atomic_path
from fabguard.params import SEED, Interval, ValidatedParams, check, check_memory

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CLIOption:
    """A command-line flag of ``fabguard anomaly train`` that sets one detector parameter.

    ``parse`` turns the text into the parameter's value (an argparse ``type``: raise ``ValueError`` or
    ``argparse.ArgumentTypeError`` for text it cannot read); the value is then checked by the detector's
    ``_parameter_constraints``. The flag's default is the detector's own default.
    """

    flag: str
    parse: Callable[[str], object]
    help: str
    choices: tuple | None = None


class Detector(ValidatedParams, BaseEstimator, ABC):
    """Base of every detector: ``fit(normal images)``, ``score``, ``decide``, ``save`` / ``load``.

    scikit-learn's estimator contract: ``__init__`` stores each argument under its own name and does
    nothing else (so ``get_params`` / ``set_params`` / ``sklearn.clone`` work); ``_parameter_constraints``
    are checked when ``fit`` starts (:meth:`check_params`); learned state ends in ``_``.

    Subclasses set ``kind`` (their registry name), declare ``_parameter_constraints``
    (``{**Detector._parameter_constraints, ...}``, as scikit-learn does) and ``cli_options``, and implement ``_fit`` (training -> scoring module),
    ``_new_module`` (an untrained module of the right shapes, for ``load``) and ``reference``.
    """

    kind: ClassVar[str]
    cli_options: ClassVar[dict[str, CLIOption]] = {}  # parameter -> its flag of `fabguard anomaly train`
    reference_label: ClassVar[str] = "reconstruction"  # what ``reference`` shows, for the error gallery
    has_latent: ClassVar[bool] = False  # the module's third output is a latent vector per image
    # parameters added since files were first written -> the value that gives the older behaviour, for
    # a file that does not name them (its ``get_params`` must say how it was fitted, not today's default)
    added_params: ClassVar[dict] = {}
    loss_label: ClassVar[str] = "reconstruction"  # the reconstruction loss in ``history_`` (loss curves)
    _parameter_constraints: ClassVar[dict] = {
        "input_size": [Interval(int, MIN_SIZE, None)],
        "val_fraction": [Interval(float, 0, 1, "neither")],
        "review_quantile": [Interval(float, 0, 1, "right")],
        "reject_quantile": [Interval(float, 0, 1, "right")],
        "seed": [SEED],
    }

    # --- what subclasses provide -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: np.ndarray, val: np.ndarray, progress: bool):
        """Train on ``train`` (``val`` may steer training) and return the scoring module."""

    @abstractmethod
    def _new_module(self, state: dict):
        """An untrained scoring module whose shapes match ``state`` (a saved state dict)."""

    @abstractmethod
    def reference(self, images: np.ndarray, normals: np.ndarray | None) -> np.ndarray:
        """What the model holds as the normal counterpart of each image, (N, 3, S, S): for the error gallery."""

    def _model_bytes(self, n_images: int) -> float:
        """Memory the training needs beyond the image batch itself (estimate, bytes)."""
        return 0.0

    def describe_training(self) -> str:
        """One line about the training run beyond thresholds (e.g. epochs), or ''."""
        return ""

    # --- shared behaviour ----------------------------------------------------------------------------
    def check_params(self) -> "Detector":
        """Refuse parameters outside ``_parameter_constraints`` (naming the parameter), before any work."""
        self._validate_params()
        if self.review_quantile > self.reject_quantile:
            check("review_quantile", self.review_quantile, Interval(float, 0, self.reject_quantile, "right"),
                  owner=type(self).__name__)
        return self

    def check_memory(self, n_images: int) -> None:
        """Refuse a training run on ``n_images`` images that cannot fit in memory, before loading them."""
        batch = 4.0 * n_images * 3 * self.input_size ** 2  # the float32 batch (N, 3, S, S)
        check_memory(2 * batch + self._model_bytes(n_images),  # 2x: decoding and the training split copy it
                     f"training the {self.kind} detector on {n_images} images of {self.input_size}x"
                     f"{self.input_size}", "use a smaller --size or fewer images")

    def fit(self, images: np.ndarray, progress: bool = False) -> "Detector":
        """Fit on normal images (N, 3, S, S) in [0, 1] and calibrate the decision thresholds."""
        self.check_params()
        images = check_batch(images, self.input_size, "training images")
        self.check_memory(len(images))
        train, val = split(len(images), self.val_fraction, self.seed)
        torch.manual_seed(self.seed)
        self.model_ = self._fit(images[train], images[val], progress).eval()
        self.val_scores_, val_heatmaps = self.score(images[val])
        self.drift_reference_ = self._drift_reference(images[val][:REFERENCE_ROWS], val_heatmaps[:REFERENCE_ROWS])
        self.thresholds_ = Thresholds.calibrate(self.val_scores_, self.review_quantile, self.reject_quantile)
        if self.review_quantile < 1 and self.thresholds_.review >= self.val_scores_.max():
            warnings.warn(f"the REVIEW threshold is the largest of the {len(val)} validation scores: too few "
                          f"normal images for a {self.review_quantile} quantile (it needs more than "
                          f"{1 / (1 - self.review_quantile):.0f}), so new normal images will be flagged more "
                          f"often than {1 - self.review_quantile:.1%}", stacklevel=2)
        self.fingerprint_ = fingerprint(images)
        self.n_train_, self.n_val_ = len(train), len(val)
        return self

    def _drift_reference(self, val_images: np.ndarray, val_heatmaps: np.ndarray) -> DriftReference:
        """The validation images as the drift monitor's reference, embedded as the service embeds each
        inspection: the latent when it is 128 wide, else the heatmap grid."""
        if self.has_latent:
            latent = self.latent(val_images)
            if latent.shape[1] == EMBEDDING_DIM:
                return DriftReference(self.val_scores_, "latent", latent.astype(np.float32))
        return DriftReference(self.val_scores_, "heatmap_grid", grid_embedding(val_heatmaps).astype(np.float32))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def score(self, images: np.ndarray, batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores (N,) and heatmaps (N, S, S) of an RGB batch (N, 3, S, S) in [0, 1]."""
        scores, heatmaps, *_ = self._run(images, batch_size, progress, "score")
        return scores, heatmaps

    def latent(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Posterior means (N, latent_dim) of an RGB batch: the image's place in the latent space (drift
        monitoring, clustering defect types), exactly the artifact's ``latent`` output."""
        if not self.has_latent:
            raise InputError(f"the {self.kind} detector has no latent space")
        return self._run(images, batch_size, False, "latent")[2]

    def _run(self, images, batch_size: int, progress: bool, method: str) -> list[np.ndarray]:
        """Every output of ``model_`` on ``images``, in batches of ``batch_size`` (for ``method``)."""
        self._check_fitted()
        check("batch_size", batch_size, Interval(int, 1, None), owner=f"{type(self).__name__}.{method}")
        images = check_batch(images, self.input_size)
        outputs = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc=f"scoring ({self.kind})",
                              disable=not progress, leave=False):
                outputs.append([o.numpy() for o in self.model_(torch.from_numpy(images[start:start + batch_size]))])
        return [np.concatenate(parts) for parts in zip(*outputs)]

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
            # validation scores and embeddings for drift monitoring (absent from models saved before it)
            **({"drift_reference": self.drift_reference_.as_dict()} if hasattr(self, "drift_reference_") else {}),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted detector to one file (torch format, tensors and plain values only)."""
        state = {"metadata": self.metadata(), "module": self.model_.state_dict(),
                 "val_scores": self.val_scores_.tolist(), "extra": self._extra_state()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @staticmethod
    def load(path: str | os.PathLike) -> "Detector":
        """Read a detector written by ``save`` (any registered kind).

        The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
        crafted file cannot run code. Every part is checked; anything else raises :class:`ModelFileError`.
        """
        where = os.fspath(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelFileError(f"{where}: no such model file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{where}: is a folder, not a model file") from None
        except Exception as exc:  # noqa: BLE001  torch.load raises pickle, zip, struct, unicode... errors for
            # damaged, foreign or crafted files (a pickle that would run code: UnpicklingError, nothing runs)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelFileError(f"{where}: not a fabguard anomaly model ({type(exc).__name__}"
                                 f"{': ' + first if first else ''})") from None
        meta = _checked_state(state, where)
        try:
            cls = registry.get("detector", meta["model"])
        except InputError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        try:
            detector = cls(**{**cls.added_params, **meta["params"]}).check_params()
        except (TypeError, InputError) as exc:
            raise ModelFileError(f"{where}: model parameters refused ({exc})") from None
        if detector.input_size != meta["input_size"]:
            raise ModelFileError(f"{where}: input size {meta['input_size']!r} differs from the parameters' "
                                 f"{detector.input_size!r}")
        try:
            detector.model_ = detector._new_module(state["module"])
            detector.model_.load_state_dict(state["module"])
            detector._load_extra_state(state["extra"])
        except (InputError, RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelFileError(f"{where}: the saved {meta['model']} module does not fit its parameters "
                                 f"({type(exc).__name__}: {first})") from None
        detector.model_.eval()
        detector.thresholds_ = Thresholds.from_dict(meta["thresholds"], where)
        detector.fingerprint_ = meta["train_fingerprint"]
        detector.n_train_, detector.n_val_ = meta["n_train"], meta["n_val"]
        detector.val_scores_ = np.asarray(state["val_scores"], dtype=np.float64)
        if "drift_reference" in meta:
            detector.drift_reference_ = DriftReference.from_dict(meta["drift_reference"], where)
        return detector

    def _extra_state(self) -> dict:
        """Fitted values beyond the module (e.g. training history), plain Python types."""
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise InputError(f"the {self.kind} detector is not fitted: call fit() or load a saved model")


_STATE = {"metadata": dict, "module": dict, "val_scores": list, "extra": dict}
_METADATA = {"model": str, "format_version": int, "params": dict, "input_size": int, "thresholds": dict,
             "train_fingerprint": str, "n_train": int, "n_val": int}


def _checked_state(state, where: str) -> dict:
    """The metadata of a loaded model file, after checking the file's structure and value types."""
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in _STATE.items()):
        raise ModelFileError(f"{where}: not a fabguard anomaly model (expected keys "
                             f"{', '.join(_STATE)} with {', '.join(t.__name__ for t in _STATE.values())} values)")
    meta = state["metadata"]
    for key, kind in _METADATA.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ModelFileError(f"{where}: model metadata {key!r} is missing or not {kind.__name__} "
                                 f"(got {meta.get(key)!r})")
    if meta["format_version"] != FORMAT_VERSION:
        raise ModelFileError(f"{where}: model format {meta['format_version']} is not {FORMAT_VERSION}")
    if min(meta["n_train"], meta["n_val"]) < 1:
        raise ModelFileError(f"{where}: n_train and n_val must be positive, got {meta['n_train']}, {meta['n_val']}")
    scores = state["val_scores"]
    if len(scores) != meta["n_val"] or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise ModelFileError(f"{where}: val_scores must be {meta['n_val']} finite numbers")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["module"].items()):
        raise ModelFileError(f"{where}: module state must map names to tensors")
    return meta


load_detector = Detector.load

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's "L" mode


def to_gray(images):
    """(N, 3, S, S) RGB torch batch -> (N, S, S) luma; exact for replicated grayscale files."""
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(1)
