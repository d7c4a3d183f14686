"""A Triton Inference Server model repository for an exported anomaly artifact.

Layout ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/<version>/model.onnx`` (platform
``onnxruntime_onnx``) or ``model.plan`` (``tensorrt_plan``, a serialized engine from
:func:`fabguard.anomaly.tensorrt.build_engine`, whose profile must cover ``max_batch``). The config
names the graph's input and outputs with their shapes (batch dimension left out, as Triton wants when
``max_batch_size`` > 0), enables dynamic batching, and carries the artifact's fabguard metadata
(thresholds, input size, training-data fingerprint) as the parameter ``fabguard`` so that a Triton
client can turn scores into PASS / REVIEW / REJECT like :class:`~fabguard.anomaly.runtime.Inspector`.
The model folder appears whole (:func:`~fabguard.outputs.atomic_dir`); other models in REPO are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from fabguard.anomaly.runtime import Inspector
from fabguard.errors import InputError
from fabguard.outputs import atomic_dir, check_output

PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
DTYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
          "tensor(int32)": "TYPE_INT32"}
QUEUE_DELAY_US = 1000  # how long Triton may hold a request to batch it with others (1 ms)


def _dims(shape, where: str) -> str:
    """Triton ``dims`` (and ``reshape``) of an ONNX shape whose first dimension is the batch."""
    rest = shape[1:]
    if any(not isinstance(d, int) for d in rest):
        raise InputError(f"{where}: only the batch dimension may be dynamic, got shape {shape}")
    if not rest:  # a batch-only tensor (the score): Triton needs dims [1] reshaped to a scalar per request
        return "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f"dims: [ {', '.join(map(str, rest))} ]"


def config_text(artifact: str | os.PathLike, name: str, platform: str, max_batch: int) -> str:
    """The ``config.pbtxt`` of ``artifact`` (read from its graph and metadata; nothing runs)."""
    from google.protobuf.text_encoding import CEscape  # protobuf text format's own string escaping

    from fabguard.runtime.session import create_session

    metadata = Inspector.read(artifact)
    session = create_session(artifact, ["CPUExecutionProvider"])
    blocks = []
    for kind, tensors in (("input", session.get_inputs()), ("output", session.get_outputs())):
        entries = []
        for t in tensors:
            if t.type not in DTYPES:
                raise InputError(f"{artifact}: {kind} {t.name} has type {t.type}, which this export does not map")
            entries.append(f'  {{\n    name: "{t.name}"\n    data_type: {DTYPES[t.type]}\n'
                           f'    {_dims(t.shape, f"{artifact}: {kind} {t.name}")}\n  }}')
        blocks.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    preferred = [b for b in (8, 32) if b < max_batch]
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n' + "\n".join(blocks)
            + f"\ndynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred or [max_batch]))} ]"
            f"\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
            f'parameters {{\n  key: "fabguard"\n  value: {{ string_value: "{CEscape(json.dumps(metadata), as_utf8=True)}" }}\n}}\n')


def check_repository(repo: str | os.PathLike, name: str, inputs=()) -> Path:
    """Refuse a bad repository path or model name before any work (the name is a folder and Triton's id)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise InputError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-' (it names a folder)")
    target = check_output(repo, "Triton model repository", inputs=inputs, folder=True)
    check_output(target / name, "Triton model folder", inputs=inputs, folder=True)
    return target


def write_repository(artifact: str | os.PathLike, repo: str | os.PathLike, name: str | None = None,
                     version: int = 1, platform: str = "onnxruntime_onnx", engine: str | os.PathLike | None = None,
                     max_batch: int = 64) -> Path:
    """Write (or replace) the model ``name`` (default: the artifact's file name) in the repository
    ``repo``; returns its folder. ``tensorrt_plan`` needs ``engine``, the TensorRT engine of ``artifact``."""
    if platform not in PLATFORMS:
        raise InputError(f"Triton platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    if (platform == "tensorrt_plan") != (engine is not None):
        raise InputError("the tensorrt_plan platform serves a TensorRT engine: give the engine (--tensorrt ENGINE), "
                         "and only for that platform")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"Triton model version must be a positive integer, got {version!r}")
    name = name or Path(artifact).stem
    target = check_repository(repo, name, inputs=[artifact] + ([engine] if engine else []))
    text = config_text(artifact, name, platform, max_batch)
    with atomic_dir(target / name) as folder:
        (folder / "config.pbtxt").write_text(text)
        (folder / str(version)).mkdir()
        shutil.copyfile(engine if engine is not None else artifact, folder / str(version) / PLATFORMS[platform])
    return target / name
