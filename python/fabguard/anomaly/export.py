"""ONNX export of a fitted detector: preprocessing and scoring inside the graph, dynamic batch.

The graph is the detector's own scoring module (``model_``): input ``images`` float32 (N, 3, S, S) RGB
in [0, 1]; outputs ``score`` (N,) and ``heatmap`` (N, S, S), and ``latent`` (N, latent_dim) for a detector
with a latent space. Grayscale conversion (VAE, PCA), centre
crop and backbone normalisation (PatchCore) happen inside it. The detector's metadata (thresholds,
version, input size, training-data fingerprint) is stored in the file as an ``anomaly-detector``
artifact (:mod:`fabguard.runtime.metadata`), so the artifact is one self-describing file. Export and
the parity check go through the shared runtime layer (:mod:`fabguard.runtime`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fabguard.anomaly.base import Detector
from fabguard.anomaly.runtime import ARTIFACT, INPUT, LATENT, OUTPUTS, Inspector
from fabguard.runtime.export import export_module
from fabguard.runtime.parity import max_abs_diff
from fabguard.runtime.session import create_session

MAX_BATCH = 1024


def export_onnx(detector: Detector, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``detector`` as an ONNX model with its metadata; returns the path."""
    meta = {**detector.metadata(), "artifact": ARTIFACT}
    size = detector.input_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    outputs = (*OUTPUTS, LATENT) if detector.has_latent else OUTPUTS
    return export_module(detector.model_, example, path, INPUT, outputs, meta, MAX_BATCH)


def parity(detector: Detector, onnx_path: str | os.PathLike, images: np.ndarray) -> dict:
    """Largest absolute differences between ONNX Runtime (CPU) and PyTorch on ``images``."""
    session = create_session(onnx_path, ["CPUExecutionProvider"])
    ort_score, ort_heat, *ort_latent = Inspector.run(session, images, MAX_BATCH)
    score, heat = detector.score(images)
    result = {
        "n_images": len(images),
        "max_abs_diff_score": max_abs_diff(ort_score, score),
        "max_abs_diff_heatmap": max_abs_diff(ort_heat, heat),
        "max_abs_score": float(np.abs(score).max()),
        "max_abs_heatmap": float(np.abs(heat).max()),
    }
    if detector.has_latent:
        latent = detector.latent(images)
        result["max_abs_diff_latent"] = max_abs_diff(ort_latent[0], latent)
        result["max_abs_latent"] = float(np.abs(latent).max())
    return result
