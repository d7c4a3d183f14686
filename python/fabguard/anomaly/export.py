"""ONNX export of a fitted detector: preprocessing and scoring inside the graph, dynamic batch.

The graph is the detector's own scoring module (``model_``): input ``images`` float32 (N, 3, S, S) RGB
in [0, 1]; outputs ``score`` (N,) and ``heatmap`` (N, S, S). Grayscale conversion (VAE, PCA), centre
crop and backbone normalisation (PatchCore) happen inside it. The detector's metadata (thresholds,
version, input size, training-data fingerprint) is stored in the file's ``metadata_props`` under the
key ``fabguard``, so the artifact is one self-describing file. Exported with the dynamo exporter
(``torch.onnx.export(dynamo=True)``), opset 18.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from fabguard.anomaly.base import Detector
from fabguard.onnx_export import OPSET, quiet_exporter
from fabguard.outputs import atomic_path

INPUT, OUTPUTS = "images", ("score", "heatmap")
METADATA_KEY = "fabguard"
MAX_BATCH = 1024


def export_onnx(detector: Detector, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``detector`` as an ONNX model with its metadata; returns the path."""
    import onnx

    meta = detector.metadata()
    size = detector.input_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet_exporter():
        program = torch.onnx.export(
            detector.model_.eval(), (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=list(OUTPUTS), dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    model = program.model_proto
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


def parity(detector: Detector, onnx_path: str | os.PathLike, images: np.ndarray) -> dict:
    """Largest absolute differences between ONNX Runtime (CPU) and PyTorch on ``images``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_score, ort_heat = session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(images, dtype=np.float32)})
    score, heat = detector.score(images)
    return {
        "n_images": len(images),
        "max_abs_diff_score": float(np.abs(ort_score - score).max()),
        "max_abs_diff_heatmap": float(np.abs(ort_heat - heat).max()),
        "max_abs_score": float(np.abs(score).max()),
    }
