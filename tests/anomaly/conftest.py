"""Shared fixtures: a small synthetic MVTec-layout dataset (64x64) and detectors fitted on it once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall small ops on shared CPUs

SIZE = 64


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from fabguard.anomaly.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "wafer", size=SIZE, n_train=30, n_test_good=8,
                        n_test_defect=4, seed=0)


@pytest.fixture(scope="session")
def normals(synthetic_root):
    from fabguard.anomaly.images import load_dataset

    return load_dataset(synthetic_root, SIZE, "train")


@pytest.fixture(scope="session")
def test_set(synthetic_root):
    from fabguard.anomaly.images import load_dataset

    return load_dataset(synthetic_root, SIZE, "test")


@pytest.fixture(scope="session")
def detectors(normals) -> dict:
    """One small fitted detector of each kind."""
    from fabguard.anomaly.patchcore import PatchCoreDetector
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.vae import VAEDetector

    return {
        "pca": PCADetector(n_components=8, input_size=SIZE).fit(normals.images),
        "vae": VAEDetector(epochs=3, batch_size=8, input_size=SIZE).fit(normals.images),
        "patchcore": PatchCoreDetector(input_size=SIZE, crop_size=None, coreset_ratio=0.25).fit(normals.images),
    }


@pytest.fixture(scope="session")
def artifacts(detectors, tmp_path_factory) -> dict:
    """Each detector exported to ONNX."""
    from fabguard.anomaly.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return {kind: export_onnx(d, folder / f"{kind}.onnx") for kind, d in detectors.items()}
