"""Runtime for the inspection line: an exported ONNX artifact -> score, heatmap and decision per image.

Needs only ONNX Runtime, numpy and PIL (no PyTorch). The best available execution provider is chosen
in the order TensorRT, CUDA, CPU. The TensorRT provider gets an engine cache beside the artifact (the
first run builds the engine, later runs load it) and one explicit shape profile for batch 1..max_batch,
so batch size changes do not rebuild the engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fabguard.anomaly.base import Thresholds
from fabguard.anomaly.export import INPUT, METADATA_KEY, OUTPUTS
from fabguard.anomaly.images import check_batch, load_images, prepare
from fabguard.errors import InputError

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class Inspection:
    """Per-image results, in input order."""

    scores: np.ndarray  # (N,)
    heatmaps: np.ndarray  # (N, S, S)
    decisions: np.ndarray  # (N,) "PASS" / "REVIEW" / "REJECT"

    def __len__(self) -> int:
        return len(self.scores)


def read_metadata(path: str | os.PathLike) -> dict:
    """The fabguard metadata stored in an exported ONNX file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such model artifact") from None
    except Exception as exc:
        raise InputError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise InputError(f"{path}: ONNX model without fabguard metadata (export it with `fabguard anomaly export`)")
    return json.loads(props[METADATA_KEY])


def provider_options(name: str, size: int, max_batch: int, cache_dir: Path, fp16: bool) -> dict:
    """ONNX Runtime options per provider: TensorRT engine cache and shape profile; no TF32 on CUDA
    unless reduced precision is asked for (TF32 would change scores at the 1e-3 level)."""
    if name == "CUDAExecutionProvider":
        return {"use_tf32": int(fp16)}
    if name != "TensorrtExecutionProvider":
        return {}
    shape = lambda n: f"{INPUT}:{n}x3x{size}x{size}"  # noqa: E731
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": fp16,
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(min(8, max_batch)),
        "trt_profile_max_shapes": shape(max_batch),
    }


class Inspector:
    """Score numpy batches, image files or raw image bytes with an exported model.

    ``providers``: ONNX Runtime provider names to try, best first (default: TensorRT, CUDA, CPU, those
    installed). ``fp16`` lets the TensorRT provider use half precision (faster, results then differ
    slightly from PyTorch). ``max_batch``: batches are cut to this size (the TensorRT profile's maximum).
    """

    def __init__(self, artifact: str | os.PathLike, providers: Sequence[str] | None = None, max_batch: int = 64,
                 fp16: bool = False, cache_dir: str | os.PathLike | None = None):
        import onnxruntime as ort

        self.path = Path(artifact)
        self.metadata = read_metadata(self.path)
        self.input_size = int(self.metadata["input_size"])
        self.thresholds = Thresholds(**self.metadata["thresholds"])
        self.max_batch = max_batch
        available = ort.get_available_providers()
        wanted = [p for p in (providers or PROVIDER_ORDER) if p in available]
        if not wanted:
            raise InputError(f"none of the providers {list(providers)} is available (available: {available})")
        cache = Path(cache_dir) if cache_dir else self.path.with_suffix(".trt_cache")
        if "TensorrtExecutionProvider" in wanted:
            cache.mkdir(parents=True, exist_ok=True)
        options = [(p, provider_options(p, self.input_size, max_batch, cache, fp16)) for p in wanted]
        session_options = ort.SessionOptions()
        # idle CPU threads sleep instead of spinning: an inspection PC runs other software too, and on a
        # shared 2-core machine spinning made batch-1 latency 2-3x worse (as OMP_WAIT_POLICY does for torch)
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), session_options, providers=options)
        self.providers = self.session.get_providers()

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
            return np.stack([prepare(image, size, f"numpy batch item {i}") for i, image in enumerate(items)])
        if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview)):
            items = [items]
        return load_images(list(items), size)

    def inspect(self, items) -> Inspection:
        """Scores, heatmaps and PASS / REVIEW / REJECT decisions for ``items`` (see ``to_batch``)."""
        batch = self.to_batch(items)
        scores, heatmaps = [], []
        for start in range(0, len(batch), self.max_batch):
            s, h = self.session.run(list(OUTPUTS), {INPUT: batch[start:start + self.max_batch]})
            scores.append(s)
            heatmaps.append(h)
        scores = np.concatenate(scores)
        return Inspection(scores, np.concatenate(heatmaps), self.thresholds.decide(scores))
