"""ONNX Runtime sessions with one policy, and the base class of everything that serves artifacts.

Provider order TensorRT, CUDA, CPU (those installed, or those asked for). The TensorRT provider gets an
engine cache (the first run builds the engine, later runs load it) and one explicit shape profile for
batch 1..max_batch, so a change of batch size does not rebuild the engine. CUDA runs without TF32 unless
reduced precision is asked for (TF32 would change scores at the 1e-3 level). Idle CPU threads sleep
instead of spinning: an inspection PC runs other software too, and on a shared 2-core machine spinning
made batch-1 latency 2-3x worse.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fabguard.errors import InputError, ModelFileError
from fabguard.runtime.metadata import read_metadata

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def provider_options(name: str, shape: Callable[[int], str] | None, max_batch: int, cache_dir: Path,
                     fp16: bool) -> dict:
    """ONNX Runtime options for provider ``name``; ``shape(n)`` is the TensorRT profile string of batch n
    (e.g. ``"images:8x3x224x224"``), None for inputs without a fixed shape."""
    if name == "CUDAExecutionProvider":
        return {"use_tf32": int(fp16)}
    if name != "TensorrtExecutionProvider":
        return {}
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir), "trt_fp16_enable": fp16}
    if shape is not None:
        options.update(trt_profile_min_shapes=shape(1), trt_profile_opt_shapes=shape(min(8, max_batch)),
                       trt_profile_max_shapes=shape(max_batch))
    return options


def create_session(path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None,
                   max_batch: int = 64, fp16: bool = False, cache_dir: str | os.PathLike | None = None,
                   shape: Callable[[int], str] | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` under this module's policy. ``threads``: intra-op
    threads (None: ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    asked = list(providers) if providers else list(PROVIDER_ORDER)
    unknown = [p for p in asked if p not in PROVIDER_ORDER and p not in available]
    if unknown:
        raise InputError(f"provider(s) {unknown} unknown to ONNX Runtime; available here: {available}")
    wanted = [p for p in asked if p in available]
    if not wanted:
        raise InputError(f"none of the providers {asked} is available here (available: {available})")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    cache = Path(cache_dir) if cache_dir else Path(path).with_suffix(".trt_cache")
    if "TensorrtExecutionProvider" in wanted:
        cache.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(os.fspath(path), options,
                                    providers=[(p, provider_options(p, shape, max_batch, cache, fp16)) for p in wanted])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise ModelFileError(f"{path}: ONNX Runtime cannot load the graph ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]})") from None


class Runtime:
    """Base of the classes that serve exported artifacts (``anomaly.Inspector``, ``active.Router``):
    they open their graphs with :meth:`open` and run them with :meth:`run`, so every engine and the
    service share one provider policy, one metadata check and one way to cut batches. Subclasses name
    their ``artifact`` kind and ``required`` metadata keys, and may refine :meth:`check_metadata` (values)
    and :meth:`profile` (the TensorRT shape profile of their input)."""

    artifact: str  # the kind of artifact this runtime serves (metadata "artifact")
    required: Mapping[str, type | tuple] = {}  # metadata keys it needs

    @classmethod
    def check_metadata(cls, path: Path, metadata: dict) -> dict:
        """The metadata with its values checked (raise :class:`ModelFileError`); keys and types are checked."""
        return metadata

    @classmethod
    def profile(cls, metadata: dict) -> Callable[[int], str] | None:
        """``n -> "input:NxCxHxW"`` for the TensorRT profile, from the metadata; None: no fixed shape."""
        return None

    @classmethod
    def read(cls, path: str | os.PathLike) -> dict:
        """The checked metadata of the artifact ``path``, without opening a session (no graph runs)."""
        return cls.check_metadata(Path(path), read_metadata(path, cls.artifact, cls.required))

    def open(self, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None,
             max_batch: int = 64, fp16: bool = False, cache_dir: str | os.PathLike | None = None):
        """(metadata, session) of the artifact ``path``: metadata checked first, then the session."""
        metadata = self.read(path)
        return metadata, create_session(path, providers, threads, max_batch, fp16, cache_dir, self.profile(metadata))

    @staticmethod
    def run(session, inputs: np.ndarray, max_batch: int) -> list[np.ndarray]:
        """All outputs of ``session`` for a float32 batch, run in chunks of at most ``max_batch`` rows."""
        name = session.get_inputs()[0].name
        chunks = [session.run(None, {name: np.ascontiguousarray(inputs[i:i + max_batch], dtype=np.float32)})
                  for i in range(0, max(len(inputs), 1), max_batch)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
