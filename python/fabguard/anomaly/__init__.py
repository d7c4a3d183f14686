"""Unsupervised visual anomaly detection: PCA baseline, convolutional VAE, PatchCore-style detector,
convolutional VAE on pretrained features, evaluation, ONNX export and the ONNX Runtime inspector
(``runtime``, the serving side). See docs/anomaly.md.

Names are imported on first use (PEP 562), so ``fabguard anomaly --help`` does not load PyTorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Augmentation": "augment",
    "Detector": "base",
    "load_detector": "base",
    "Thresholds": "base",
    "DECISIONS": "base",
    "ImageSet": "images",
    "load_dataset": "images",
    "load_image": "images",
    "load_images": "images",
    "PCADetector": "pca",
    "VAEDetector": "vae",
    "PatchCoreDetector": "patchcore",
    "FeatureVAEDetector": "feature_vae",
    "export_onnx": "export",
    "Inspector": "runtime",
    "Inspection": "runtime",
    "make_dataset": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fabguard.anomaly' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fabguard.anomaly.{_EXPORTS[name]}"), name)
