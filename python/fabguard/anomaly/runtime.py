"""Serving side of the anomaly engine: an exported ONNX artifact -> score, heatmap and decision per image.

Needs only ONNX Runtime, numpy and PIL (no PyTorch). Sessions come from :mod:`fabguard.runtime` (provider
order TensorRT, CUDA, CPU; TensorRT engine cache beside the artifact and one shape profile for batch
1..max_batch of the artifact's input size; idle threads sleep). The artifact's metadata is checked before
a session is created, and the graph's input and outputs against it afterwards, so a foreign or crafted
file is refused with what is wrong (:class:`~fabguard.errors.ModelFileError`). A detector with a latent
space (the VAEs) has a third output, ``latent`` (N, latent_dim): the posterior mean of each image, for
drift monitoring and defect-type clustering; artifacts without it stay valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fabguard.anomaly.thresholds import MIN_SIZE, Thresholds
from fabguard.anomaly.images import check_batch, load_images, prepare
from fabguard.anomaly.reference import DriftReference
from fabguard.errors import InputError, ModelFileError
from fabguard.params import POSITIVE_INT, check, check_memory
from fabguard.runtime.session import Runtime

ARTIFACT = "anomaly-detector"
INPUT, OUTPUTS, LATENT = "images", ("score", "heatmap"), "latent"
MAX_SIZE = 8192  # an input side larger than any inspection camera's: a crafted size is refused, not allocated


@dataclass
class Inspection:
    """Per-image results, in input order."""

    scores: np.ndarray  # (N,)
    heatmaps: np.ndarray  # (N, S, S)
    decisions: np.ndarray  # (N,) "PASS" / "REVIEW" / "REJECT"
    latents: np.ndarray | None = None  # (N, latent_dim) posterior means, for a model with a latent space

    def __len__(self) -> int:
        return len(self.scores)


class Inspector(Runtime):
    """Score numpy batches, image files or raw image bytes with an exported model.

    ``providers``: ONNX Runtime provider names to try, best first (default: TensorRT, CUDA, CPU, those
    installed). ``fp16`` lets the TensorRT provider use half precision (faster, results then differ
    slightly from PyTorch). ``max_batch``: batches are cut to this size (the TensorRT profile's maximum).
    ``threads``: CPU threads (default: ONNX Runtime's, one per core).
    """

    artifact = ARTIFACT
    required = {"model": str, "input_size": int, "thresholds": dict, "train_fingerprint": str}

    def __init__(self, artifact: str | os.PathLike, providers: Sequence[str] | None = None, max_batch: int = 64,
                 fp16: bool = False, cache_dir: str | os.PathLike | None = None, threads: int | None = None):
        self.max_batch = check("max_batch", max_batch, POSITIVE_INT, owner="Inspector")
        self.path = Path(artifact)
        self.metadata, self.session = self.open(self.path, providers, threads, max_batch, fp16, cache_dir)
        size = self.input_size = self.metadata["input_size"]
        self.thresholds = Thresholds(**self.metadata["thresholds"])
        self.providers = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].shape[1:] != [3, size, size] \
                or outputs not in (list(OUTPUTS), [*OUTPUTS, LATENT]):
            found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise ModelFileError(f"{self.path}: graph takes {found} and gives {outputs}; an anomaly detector "
                                 f"takes {INPUT} [N, 3, {size}, {size}] and gives {list(OUTPUTS)}, optionally "
                                 f"followed by {LATENT!r}")
        self.has_latent = outputs[-1] == LATENT
        reference = self.metadata.get("drift_reference")
        self.drift_reference = None if reference is None else DriftReference.from_dict(reference, str(self.path))

    @classmethod
    def check_metadata(cls, path: Path, metadata: dict) -> dict:
        size = metadata["input_size"]
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ModelFileError(f"{path}: metadata input_size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
        metadata["thresholds"] = Thresholds.from_dict(metadata["thresholds"], str(path)).as_dict()
        if "drift_reference" in metadata:  # optional: artifacts exported before it lack it
            DriftReference.from_dict(metadata["drift_reference"], str(path))
        return metadata

    @classmethod
    def profile(cls, metadata: dict):
        size = metadata["input_size"]
        return lambda n: f"{INPUT}:{n}x3x{size}x{size}"

    def to_batch(self, items) -> np.ndarray:
        """Model input (N, 3, S, S) from a numpy batch, one image file / bytes, or a sequence of them.

        A numpy batch is (N, H, W) grayscale, (N, H, W, C) or (N, 3, H, W); uint8, uint16 or float in
        [0, 1]; any size (resized here).
        """
        size = self.input_size
        if isinstance(items, np.ndarray):
            if items.ndim == 4 and items.shape[1] == 3 and items.shape[-1] not in (1, 2, 3, 4):
                if items.dtype == np.float32 and items.shape[2:] == (size, size):
                    return check_batch(items, size)
                items = np.moveaxis(items, 1, -1)
            if items.ndim not in (3, 4) or len(items) == 0:
                raise InputError(f"numpy batch: expected (N, H, W), (N, H, W, C) or (N, 3, H, W), got {items.shape}")
            check_memory(4.0 * len(items) * 3 * size ** 2, f"{len(items)} images at {size}x{size}")
            return np.stack([prepare(image, size, f"numpy batch item {i}") for i, image in enumerate(items)])
        if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview)):
            items = [items]
        items = list(items)
        check_memory(4.0 * len(items) * 3 * size ** 2, f"{len(items)} images at {size}x{size}")
        return load_images(items, size)

    def inspect(self, items) -> Inspection:
        """Scores, heatmaps, PASS / REVIEW / REJECT decisions and (where the model has them) latent vectors
        for ``items`` (see ``to_batch``)."""
        scores, heatmaps, *latents = self.run(self.session, self.to_batch(items), self.max_batch)
        return Inspection(scores, heatmaps, self.thresholds.decide(scores), *latents)
