"""Training-time augmentation of normal images (used by the VAE), switchable by preset.

Why these presets (docs/anomaly.md has the longer argument): a wafer surface has no preferred
orientation, so flips in both axes and small rotations produce images that really occur. A packaged
component such as MVTec's transistor does have one: a vertical flip or a large rotation would teach the
model that a component upside down or rotated (a "misplaced" defect) is normal, so ``component`` keeps
horizontal flips (the part is nearly mirror-symmetric) and rotations of a few degrees (placement
tolerance). Mild Gaussian noise stands in for sensor noise in both. Colour or contrast changes are left
out on purpose: an intensity shift is itself a defect symptom on inspection images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fabguard.errors import InputError


@dataclass(frozen=True)
class Augmentation:
    """Random flips, rotation within +-``rotate_deg`` and Gaussian noise of std ``noise_std``."""

    hflip: bool = False
    vflip: bool = False
    rotate_deg: float = 0.0
    noise_std: float = 0.0

    @classmethod
    def preset(cls, name: str) -> "Augmentation":
        if name not in PRESETS:
            raise InputError(f"unknown augmentation {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]

    @property
    def active(self) -> bool:
        return self.hflip or self.vflip or self.rotate_deg > 0 or self.noise_std > 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, batch, generator):
        """Augment a (N, C, H, W) torch batch in [0, 1]; ``generator`` (torch.Generator) makes it reproducible."""
        import torch
        import torch.nn.functional as F

        if not self.active:
            return batch
        n = batch.shape[0]
        out = batch
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        if self.vflip:
            flip = torch.rand(n, generator=generator) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-2), out)
        if self.rotate_deg > 0:
            angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(self.rotate_deg)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(n)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta.to(out.dtype), list(out.shape), align_corners=False)
            out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.noise_std > 0:
            noise = torch.randn(out.shape, generator=generator, dtype=out.dtype) * self.noise_std
            out = (out + noise).clamp(0.0, 1.0)
        return out


PRESETS = {
    "none": Augmentation(),
    "wafer": Augmentation(hflip=True, vflip=True, rotate_deg=10.0, noise_std=0.01),
    "component": Augmentation(hflip=True, vflip=False, rotate_deg=3.0, noise_std=0.01),
}
