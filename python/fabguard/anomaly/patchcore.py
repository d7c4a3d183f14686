"""Pretrained-feature detector of the PatchCore family (Roth et al., CVPR 2022) on efficientnet-lite0.

Mid-level features of an ImageNet CNN describe local texture and shape far better than pixels, which is
why this detector reaches what a pixel-space VAE cannot (docs/anomaly.md). Recipe (tested on MVTec
transistor, see ../shared/seeds/NOTES.md): centre crop, outputs of blocks 4 (1/8 resolution, 40 ch)
and 14 (1/32, 192 ch), each averaged over a 3x3 neighbourhood, the coarse one upsampled and both
concatenated into one vector per patch; a greedy k-centre coreset of 5% of the training patches,
selected on a seeded random projection of the features to 64 dimensions (the paper's shortcut, there
to 128), is the memory bank (of full features): on transistor both kept the image and pixel AUROC of
10% on all features within the seed noise and cut the fit from 64 to 15 CPU seconds (measured,
bench/results/anomaly/coreset_speed.md); a patch's anomaly is its Euclidean distance to the nearest
bank entry, the image score the largest patch anomaly, the heatmap the patch anomalies upsampled and
smoothed (Gaussian, sigma 4).

The backbone and its patch features are shared with the feature-space VAE (:mod:`.backbone`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fabguard.anomaly.backbone import (
    EfficientNetFeatures,
    block_shapes,
    block_stride,
    check_backbone,
    gaussian_kernel,
    parse_crop,
    parse_layers,
    patch_features,
    patch_heatmap,
)
from fabguard.anomaly.base import CLIOption, Detector
from fabguard.errors import InputError
from fabguard.params import NONE, Instance, Interval


def parse_projection(text: str) -> int | None:
    """``--coreset-projection`` text -> dimensions; 0 means the full features (None)."""
    return int(text) or None


class PatchCoreScorer(nn.Module):
    """RGB batch -> (image scores, heatmaps): patch features, nearest-neighbour distance to the memory bank."""

    def __init__(self, features: EfficientNetFeatures, bank_size: int, input_size: int, crop_size: int,
                 pool: int, sigma: float):
        super().__init__()
        self.features = features
        self.input_size, self.crop_size, self.pool = input_size, crop_size, pool
        dim = features.channels
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("bank", torch.zeros(bank_size, dim))
        self.register_buffer("bank_sq", torch.zeros(bank_size))
        self.register_buffer("kernel", gaussian_kernel(sigma) if sigma > 0 else torch.ones(1))

    def set_bank(self, bank: torch.Tensor) -> None:
        """Store the bank relative to its mean: distances are computed as |q|^2 - 2 q.b + |b|^2, and
        centring shrinks the norms, hence float32 cancellation (25x smaller error, measured)."""
        self.center = bank.double().mean(0).float()
        self.bank = (bank - self.center).contiguous()
        self.bank_sq = (self.bank * self.bank).sum(1)

    def embed(self, images):
        """(N, 3, S, S) in [0, 1] -> patch features (N, D, h, w) of the centre crop. The batch goes in
        channels-last: the backbone then takes 15-28% less CPU time at batches of 1 to 32 (measured,
        bench/results/anomaly/coreset_speed.md); the values change by float32 rounding only."""
        images = images.contiguous(memory_format=torch.channels_last)
        return patch_features(self.features, images, self.input_size, self.crop_size, self.pool)

    def patch_distances(self, images):
        """(N, h, w) Euclidean distance of every patch to its nearest memory-bank entry."""
        return self.distances(self.embed(images))

    def distances(self, f):
        """Patch features (N, D, h, w) -> (N, h, w) distance of each to its nearest memory-bank entry."""
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d) - self.center
        # min_b |q - b|^2 = |q|^2 + min_b (|b|^2 - 2 q.b): one (patches x bank) buffer, as one Gemm
        nearest = torch.addmm(self.bank_sq, q, self.bank.T, alpha=-2.0).amin(1) + (q * q).sum(1)
        return nearest.clamp_min(0.0).sqrt().view(n, h, w)

    def forward(self, images):
        dist = self.patch_distances(images)
        return dist.flatten(1).amax(1), patch_heatmap(dist, self.kernel, self.input_size, self.crop_size)


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """(M, D) -> (M, dim): a seeded Gaussian projection scaled by 1/sqrt(dim), which keeps squared
    distances in expectation (Johnson-Lindenstrauss). Dense: at D = 232 the product is a fraction of a
    second, so a sparse matrix would save nothing."""
    weights = torch.randn(features.shape[1], dim, generator=torch.Generator().manual_seed(seed))
    return features @ weights.div_(dim ** 0.5)


def greedy_coreset(features: torch.Tensor, size: int, seed: int, progress: bool = False,
                   projection: int | None = None) -> torch.Tensor:
    """Indices of a k-centre greedy coreset: a seeded random start, then each time the point farthest
    from those chosen (the compiled core's ``kcenter_greedy``: float32, exact, on torch's thread count
    with the same result for any; triangle-inequality bounds skip most distances, see cpp/coreset.cpp).
    With ``projection`` below the feature width, distances are those of :func:`random_projection`
    (PatchCore's own shortcut: selection time is proportional to the width).
    """
    from fabguard import _core

    m = len(features)
    size = min(size, m)
    start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))
    features = features.detach()
    if projection is not None and projection < features.shape[1]:
        features = random_projection(features, projection, seed)
    with tqdm(total=size, desc="coreset", disable=not progress, leave=False, mininterval=1.0) as bar:
        chosen = _core.kcenter_greedy(features.contiguous().numpy(), size, start,
                                      threads=torch.get_num_threads(), progress=lambda done: bar.update(done - bar.n))
    return torch.from_numpy(chosen)


class PatchCoreDetector(Detector):
    """PatchCore-style detector on efficientnet-lite0 features (blocks ``layers``), coreset memory bank.

    ``coreset_projection``: width of the random projection the coreset is selected on (None: the full
    features); ``batch_size``: images per backbone pass in ``fit`` (4: least CPU per image measured, larger
    batches outgrow the caches). Both are measured in bench/results/anomaly/coreset_speed.md.
    """

    kind = "patchcore"
    added_params: ClassVar[dict] = {"coreset_projection": None}  # files before it selected on all features
    reference_label = "nearest normal"
    _parameter_constraints: ClassVar[dict] = {
        **Detector._parameter_constraints,
        "layers": [Instance((tuple, list))],
        "crop_size": [NONE, Interval(int, 1, None)],
        "pool": [Interval(int, 1, None)],
        "coreset_ratio": [Interval(float, 0, 1, "right")],
        "coreset_projection": [NONE, Interval(int, 1, None)],
        "sigma": [Interval(float, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    cli_options: ClassVar[dict[str, CLIOption]] = {
        "coreset_ratio": CLIOption("--coreset-ratio", float, "patchcore: memory bank share (default 0.05)"),
        "coreset_projection": CLIOption("--coreset-projection", parse_projection,
                                        "patchcore: dimensions the coreset is selected in, 0 = all (default 64)"),
        "crop_size": CLIOption("--crop", parse_crop, "patchcore: centre crop size, 0 = none (default 224)"),
        "layers": CLIOption("--layers", parse_layers, "patchcore: backbone blocks (default 4,14)"),
    }

    def __init__(self, layers: tuple[int, ...] = (4, 14), crop_size: int | None = 224, pool: int = 3,
                 coreset_ratio: float = 0.05, coreset_projection: int | None = 64, sigma: float = 4.0,
                 batch_size: int = 4, input_size: int = 256,
                 val_fraction: float = 0.2, review_quantile: float = 0.95, reject_quantile: float = 0.995,
                 seed: int = 0):
        self.layers = layers
        self.crop_size = crop_size
        self.pool = pool
        self.coreset_ratio = coreset_ratio
        self.coreset_projection = coreset_projection
        self.sigma = sigma
        self.batch_size = batch_size
        self.input_size = input_size
        self.val_fraction = val_fraction
        self.review_quantile = review_quantile
        self.reject_quantile = reject_quantile
        self.seed = seed

    def check_params(self):
        """The common checks, then blocks of the backbone and a crop its stride divides."""
        super().check_params()
        check_backbone(type(self).__name__, self.layers, self.pool, self.crop_size, self.input_size)
        return self

    def _model_bytes(self, n_images):
        """Every training patch's feature vector (the coreset runs over all of them), its projection when
        there is one, the selection's copy of what it runs on with up to one more in transit when a
        cluster's storage shrinks (1,880 bytes per 232-float patch measured,
        bench/results/anomaly/coreset_speed.md), the chosen rows, and the backbone's batch."""
        crop = self.crop_size or self.input_size
        dim = sum(block_shapes()[i][0] for i in self.layers)
        width = min(dim, self.coreset_projection or dim)
        n_patches = n_images * (crop // block_stride(self.layers[0])) ** 2
        per_patch = 4.0 * dim * (1 + self.coreset_ratio) + 4.0 * width * (2 + (width < dim)) + 36
        return n_patches * per_patch + 4.0 * self.batch_size * 100 * crop ** 2

    def _scorer(self, bank_size: int, pretrained: bool) -> PatchCoreScorer:
        features = EfficientNetFeatures(tuple(self.layers), pretrained)
        crop = self.crop_size or self.input_size
        return PatchCoreScorer(features, bank_size, self.input_size, crop, self.pool, self.sigma)

    def _fit(self, train, val, progress):
        scorer = self._scorer(0, pretrained=True).eval()
        patches = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(train), self.batch_size), desc="features", disable=not progress,
                              leave=False):
                f = scorer.embed(torch.from_numpy(train[start:start + self.batch_size]))
                patches.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        patches = torch.cat(patches)
        chosen = greedy_coreset(patches, max(1, round(self.coreset_ratio * len(patches))), self.seed, progress,
                                self.coreset_projection)
        scorer.set_bank(patches[chosen].clone())
        return scorer

    def _new_module(self, state):
        return self._scorer(len(state["bank"]), pretrained=False)

    def descriptors(self, images: np.ndarray) -> np.ndarray:
        """Mean patch feature per image (N, D): a global descriptor to find the nearest normal image."""
        with torch.inference_mode():
            return np.concatenate([
                self.model_.embed(torch.from_numpy(images[s:s + self.batch_size])).mean((2, 3)).numpy()
                for s in range(0, len(images), self.batch_size)
            ])

    def reference(self, images, normals):
        """The nearest normal image (global feature distance) among ``normals``."""
        self._check_fitted()
        if normals is None or len(normals) == 0:
            raise InputError("PatchCore's reference image needs the normal (training) images")
        a, b = self.descriptors(images), self.descriptors(normals)
        nearest = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).argmin(1)
        return normals[nearest]
