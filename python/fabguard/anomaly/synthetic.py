"""Synthetic wafer-like images with injected scratches and particles, and their masks.

Normal images: a periodic die pattern (random sub-period phase shift), a slow illumination gradient and
sensor noise. Defects: a scratch (a thin dark or bright line segment) or a particle (a small blob).
Used by the tests and by ``fabguard anomaly synthetic`` to try the commands without real data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from fabguard.anomaly.images import NORMAL, ImageSet
from fabguard.errors import InputError
from fabguard.outputs import atomic_dir, atomic_path, check_output
from fabguard.params import MAX_SEED, Interval, check, check_memory

DEFECT_TYPES = ("scratch", "particle")


def normal_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    period = 1 / 6
    shift = rng.uniform(-0.02, 0.02, 2)
    dies = np.sin(2 * np.pi * (xx + shift[0]) / period) * np.sin(2 * np.pi * (yy + shift[1]) / period)
    gradient = rng.uniform(-0.05, 0.05) * (xx - 0.5) + rng.uniform(-0.05, 0.05) * (yy - 0.5)
    image = 0.5 + 0.15 * dies + gradient + rng.normal(0, 0.02, (size, size))
    return np.clip(image, 0, 1)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``image`` with one defect of ``kind``, and the defect's mask."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    centre = rng.uniform(0.25, 0.75, 2) * size
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        along = (xx - centre[0]) * direction[0] + (yy - centre[1]) * direction[1]
        across = -(xx - centre[0]) * direction[1] + (yy - centre[1]) * direction[0]
        mask = (np.abs(across) <= max(1.0, size / 64)) & (np.abs(along) <= rng.uniform(0.15, 0.3) * size)
    elif kind == "particle":
        radius = rng.uniform(0.04, 0.07) * size
        mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    else:
        raise InputError(f"unknown synthetic defect {kind!r}; choose one of {', '.join(DEFECT_TYPES)}")
    value = rng.choice([0.05, 0.95])
    out = image.copy()
    out[mask] = value + rng.normal(0, 0.02, mask.sum())
    return np.clip(out, 0, 1), mask


def synthetic_set(n_normal: int, n_defect: int, size: int = 64, seed: int = 0) -> ImageSet:
    """In memory: ``n_normal`` normal images, then ``n_defect`` defective ones alternating scratch / particle."""
    rng = np.random.default_rng(seed)
    grays, masks, kinds = [], [], []
    for i in range(n_normal + n_defect):
        image = normal_image(size, rng)
        mask = np.zeros((size, size), bool)
        kind = NORMAL if i < n_normal else DEFECT_TYPES[(i - n_normal) % len(DEFECT_TYPES)]
        if kind != NORMAL:
            image, mask = add_defect(image, kind, rng)
        grays.append(image)
        masks.append(mask)
        kinds.append(kind)
    images = np.repeat(np.stack(grays).astype(np.float32)[:, None], 3, axis=1)
    return ImageSet(images, [f"synthetic/{k}/{i:03d}" for i, k in enumerate(kinds)],
                    np.array([int(k != NORMAL) for k in kinds]), kinds, np.stack(masks))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(array * 255).astype(np.uint8)).save(tmp, format="PNG")


def make_dataset(root: str | os.PathLike, size: int = 128, n_train: int = 60, n_test_good: int = 20,
                 n_test_defect: int = 10, seed: int = 0) -> Path:
    """Write an MVTec-layout dataset of 8-bit grayscale PNGs: train/good, test/<type>, ground_truth/<type>.

    The folder appears whole or not at all (written beside it, then moved into place)."""
    for name, value, low in (("size", size, 16), ("n_train", n_train, 1), ("n_test_good", n_test_good, 1),
                             ("n_test_defect", n_test_defect, 1)):
        check(name, value, Interval(int, low, None), owner="make_dataset")
    check("seed", seed, Interval(int, 0, MAX_SEED - 1), owner="make_dataset")  # the test part uses seed + 1
    root = check_output(root, "dataset folder", folder=True)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root}: folder exists and is not empty")
    n_images = n_train + n_test_good + n_test_defect * len(DEFECT_TYPES)
    check_memory(8.0 * 5 * n_images * size ** 2, f"{n_images} synthetic images of {size}x{size}", "use a smaller size")
    train = synthetic_set(n_train, 0, size, seed)
    test = synthetic_set(n_test_good, n_test_defect * len(DEFECT_TYPES), size, seed + 1)
    with atomic_dir(root) as tmp:
        for i, image in enumerate(train.images):
            _save_png(image[0], tmp / "train" / NORMAL / f"{i:03d}.png")
        counters: dict[str, int] = {}
        for image, mask, kind in zip(test.images, test.masks, test.defect_types):
            n = counters[kind] = counters.get(kind, -1) + 1
            _save_png(image[0], tmp / "test" / kind / f"{n:03d}.png")
            if kind != NORMAL:
                _save_png(mask.astype(np.float32), tmp / "ground_truth" / kind / f"{n:03d}_mask.png")
    return root
