"""TensorRT engine builder for an exported ONNX artifact (needs ``pip install 'fabguard[gpu]'`` and a GPU).

One optimization profile covers batch 1..64 (opt 8), so one engine serves every batch size. FP16 where
the toolchain allows it: TensorRT 10 takes ``BuilderFlag.FP16`` (if the GPU has fast FP16); TensorRT 11
removed that flag and builds strongly typed networks only, whose precision is the ONNX graph's own, so
with the FP32 graphs fabguard exports the engine is FP32 there and the result says so.
The ``Inspector`` does not need this: ONNX Runtime's TensorRT provider builds and caches its own engine.
This builder is for serving the engine outside ONNX Runtime (e.g. Triton, a C++ line application).
"""

from __future__ import annotations

import os
from pathlib import Path

from fabguard.anomaly.runtime import Inspector
from fabguard.errors import InputError
from fabguard.outputs import atomic_path


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = True,
                 batch: tuple[int, int, int] = (1, 8, 64), workspace_bytes: int = 2 << 30) -> dict:
    """Build and write a serialized engine; returns what was built (TensorRT version, precision, profile)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise InputError("TensorRT is not installed: pip install 'fabguard[gpu]' on a machine with an NVIDIA GPU") from None
    size = Inspector.read(onnx_path)["input_size"]
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise InputError(f"batch profile must be min <= opt <= max, got {batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
    flags = 0
    if fp16_flag is None and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    use_fp16 = bool(fp16 and fp16_flag is not None and getattr(builder, "platform_has_fast_fp16", True))
    if use_fp16:
        config.set_flag(fp16_flag)
    name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *[(n, 3, size, size) for n in batch])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    return {"engine": str(Path(engine_path)), "tensorrt": trt.__version__, "fp16": use_fp16,
            "fp16_note": None if use_fp16 or not fp16 else
            ("this TensorRT has no FP16 builder flag (strongly typed only): FP16 needs an FP16 ONNX graph"
             if fp16_flag is None else "this GPU has no fast FP16"),
            "input": name, "batch_profile": list(batch), "input_size": size}
