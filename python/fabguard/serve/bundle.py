"""Make the default model shipped in the package: ``python -m fabguard.serve.bundle``.

A fresh ``fabguard serve`` needs a model to answer with, and nothing may be downloaded, so a small one is
shipped: PCA reconstruction (16 components, 64x64 grey) fitted with seed 0 on 1,000 normal images of
:func:`fabguard.anomaly.synthetic.synthetic_set` (800 to fit, 200 to validate: the thresholds and the drift
reference, :mod:`fabguard.serve.drift`, whose KS test can see no finer than its reference sample allows),
evaluated on 100 normal + 100 defective images drawn with seed 1. Every image is first rounded to 8 bits, as
the PNGs an inspection station sends (and ``fabguard anomaly synthetic`` writes) are: PCA's residuals are
small enough that quantisation noise moves them, and a model calibrated on unrounded floats rejects several
percent of normal 8-bit images. The ONNX file (~400 kB with the drift
reference) and its evaluation report (AUROC, AUPRC, FNR@FPR5%, latency) are written into
``fabguard/serve/default_model/``. Running it again writes the same model (same seed, same data).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).with_name("default_model")
VERSION = "pca-wafer-v1.1.0"
SIZE, COMPONENTS, SEED, N_NORMAL = 64, 16, 0, 1000


def as_8bit(images: np.ndarray) -> np.ndarray:
    """``images`` (floats in [0, 1]) as they arrive after an 8-bit PNG round trip."""
    from fabguard.anomaly.images import to_unit_float

    return to_unit_float(np.round(images * 255).astype(np.uint8), "synthetic images")


def make(folder: Path = FOLDER) -> dict:
    """Fit, export and evaluate the default model into ``folder``; returns the report."""
    from fabguard.anomaly.evaluate import metrics
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.runtime import Inspector
    from fabguard.anomaly.synthetic import synthetic_set
    from fabguard.outputs import atomic_path

    train = synthetic_set(N_NORMAL, 0, SIZE, seed=SEED)
    test = synthetic_set(100, 100, SIZE, seed=SEED + 1)
    test.images = as_8bit(test.images)
    detector = PCADetector(n_components=COMPONENTS, input_size=SIZE, seed=SEED).fit(as_8bit(train.images))
    artifact = export_onnx(detector, folder / f"{VERSION}.onnx", seed=SEED)
    inspector = Inspector(artifact, providers=["CPUExecutionProvider"], threads=1)
    result = inspector.inspect(test.images)
    one = test.images[:1]
    inspector.inspect(one)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        inspector.inspect(one)
        times.append(time.perf_counter() - start)
    found = metrics(test, result.scores, result.heatmaps, result.decisions)
    report = {"version": VERSION, "model": "pca", "input_size": SIZE, "n_components": COMPONENTS, "seed": SEED,
              "train": f"synthetic_set({N_NORMAL} normal, size 64, seed 0) rounded to 8 bits, 20% held out for "
                       "validation",
              "test": "synthetic_set(100 normal + 100 defect, size 64, seed 1) rounded to 8 bits",
              "auroc": found["image_auroc"], "auprc": found["image_auprc"], "fnr_at_fpr5": found["fnr_at_fpr5"],
              "pixel_auroc": found["pixel_auroc"],
              "latency_ms_p50": float(np.median(times) * 1e3),
              "latency_note": "ONNX Runtime CPU, 1 thread, batch 1, median of 50 (machine that made it)"}
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(make(), indent=2))
