"""The service's bundled model before v2 (``pca-wafer-v1.1.0``), fitted again for the benches measured with it.

PCA reconstruction, 16 components, 64x64 grey, seed 0, on 1,000 normal 64-pixel synthetic wafers rounded to
8 bits (20% held out): the recipe of the bundle it was, so the same data and seed give the same bytes, and the
results recorded with the old bundled file (line_week.md, drift.md) stay reproducible by their commands now
that the package ships the feature-space VAE.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "pca-wafer-v1.1.0"
SIZE, COMPONENTS, SEED, N_NORMAL = 64, 16, 0, 1000


def pca_wafer(folder: Path) -> tuple[Path, dict]:
    """(ONNX artifact in ``folder``, evaluation report as the bundle writes one)."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.synthetic import synthetic_set
    from fabguard.serve.bundle import as_8bit, evaluate

    train = as_8bit(synthetic_set(N_NORMAL, 0, SIZE, seed=SEED).images)
    detector = PCADetector(n_components=COMPONENTS, input_size=SIZE, seed=SEED).fit(train)
    artifact = export_onnx(detector, Path(folder) / f"{VERSION}.onnx", seed=SEED)
    return artifact, {"version": VERSION, "model": detector.kind, "params": detector.get_params(),
                      "train": f"synthetic_set({N_NORMAL} normal, size {SIZE}, seed {SEED}) rounded to 8 bits, 20% "
                               "held out for validation", **evaluate(artifact)}
