"""PCA reconstruction baseline (case study 3.3): a linear autoencoder on grayscale pixels.

Fitted with scikit-learn; scoring is the same projection written in torch so that it exports to ONNX:
score = mean squared reconstruction error, heatmap = per-pixel squared error.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from fabguard.anomaly.base import CLIOption, Detector, to_gray
from fabguard.errors import InputError
from fabguard.params import Interval


class PCAReconstruction(nn.Module):
    """Gray image -> projection on the principal components -> squared error."""

    def __init__(self, n_components: int, n_pixels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_pixels))
        self.register_buffer("components", torch.zeros(n_components, n_pixels))

    def reconstruct(self, images):
        x = to_gray(images).flatten(1)
        return ((x - self.mean) @ self.components.T) @ self.components + self.mean

    def forward(self, images):
        gray = to_gray(images)
        heatmap = (gray.flatten(1) - self.reconstruct(images)) ** 2
        return heatmap.mean(1), heatmap.view_as(gray)


class PCADetector(Detector):
    """PCA reconstruction error with ``n_components`` components (the case study tries 10, 50, 100, 200)."""

    kind = "pca"
    _parameter_constraints = {**Detector._parameter_constraints, "n_components": [Interval(int, 1, None)]}
    cli_options = {"n_components": CLIOption("--components", int, "pca: number of components (default 50)")}

    def __init__(self, n_components: int = 50, input_size: int = 256, val_fraction: float = 0.2,
                 review_quantile: float = 0.95, reject_quantile: float = 0.995, seed: int = 0):
        self.n_components = n_components
        self.input_size = input_size
        self.val_fraction = val_fraction
        self.review_quantile = review_quantile
        self.reject_quantile = reject_quantile
        self.seed = seed

    def _model_bytes(self, n_images):
        """Gray pixels and scikit-learn's SVD of them (float64 in the worst case)."""
        return 8.0 * self.input_size ** 2 * (2 * n_images + self.n_components)

    def _fit(self, train, val, progress):
        if self.n_components > len(train):
            raise InputError(
                f"PCA with {self.n_components} components needs at least that many training images; "
                f"got {len(train)} after the validation split"
            )
        x = to_gray(torch.from_numpy(train)).flatten(1).numpy()
        pca = PCA(n_components=self.n_components, random_state=self.seed).fit(x)
        module = PCAReconstruction(self.n_components, x.shape[1])
        module.mean.copy_(torch.from_numpy(pca.mean_.astype(np.float32)))
        module.components.copy_(torch.from_numpy(pca.components_.astype(np.float32)))
        self.explained_variance_ratio_ = pca.explained_variance_ratio_
        return module

    def _new_module(self, state):
        return PCAReconstruction(*state["components"].shape)

    def reference(self, images, normals=None):
        """The PCA reconstruction, grey replicated to RGB."""
        self._check_fitted()
        with torch.inference_mode():
            recon = self.model_.reconstruct(torch.from_numpy(images)).clamp(0, 1)
        return recon.view(len(images), 1, self.input_size, self.input_size).expand(-1, 3, -1, -1).numpy()

    def _extra_state(self):
        return {"explained_variance_ratio": self.explained_variance_ratio_.tolist()}

    def _load_extra_state(self, extra):
        self.explained_variance_ratio_ = np.asarray(extra["explained_variance_ratio"])
