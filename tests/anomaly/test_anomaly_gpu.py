"""GPU paths: TensorRT engine builder and the CUDA / TensorRT providers. Skipped without a GPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest


def cuda_devices() -> int:
    """Number of CUDA devices the driver reports (0 without a driver)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


needs_gpu = pytest.mark.skipif(cuda_devices() == 0, reason="no CUDA device")


def _provider(name: str) -> None:
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        pytest.skip(f"{name} is not in this onnxruntime build (pip install 'fabguard[gpu]')")


@needs_gpu
def test_tensorrt_engine_builds_with_batch_profile(artifacts, tmp_path):
    pytest.importorskip("tensorrt")
    from fabguard.anomaly.tensorrt import build_engine

    info = build_engine(artifacts["patchcore"], tmp_path / "pc.engine", fp16=True, batch=(1, 4, 8))
    assert (tmp_path / "pc.engine").stat().st_size > 0
    assert info["batch_profile"] == [1, 4, 8] and isinstance(info["fp16"], bool)


@needs_gpu
@pytest.mark.parametrize("providers", [["CUDAExecutionProvider"], ["TensorrtExecutionProvider", "CUDAExecutionProvider"]])
def test_gpu_providers_match_cpu(detectors, artifacts, test_set, providers, tmp_path):
    from tests.anomaly.conftest import parity_bounds
    from fabguard.anomaly.runtime import Inspector

    _provider(providers[0])
    gpu = Inspector(artifacts["vae"], providers=providers, cache_dir=tmp_path / "cache")
    assert gpu.providers[0] == providers[0]
    cpu = Inspector(artifacts["vae"], providers=["CPUExecutionProvider"])
    a, b = gpu.inspect(test_set.images), cpu.inspect(test_set.images)
    # CUDA runs float32 without TF32: the float32 bound of two summation orders. TensorRT may pick TF32
    # kernels, whose products keep 10 mantissa bits (unit round-off 2**-11 instead of 2**-24): 2**13 times it
    bound, _ = parity_bounds(detectors["vae"], test_set.images)
    if providers[0] == "TensorrtExecutionProvider":
        bound *= 2.0**13
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=bound)
    if providers[0] == "TensorrtExecutionProvider":
        assert any((tmp_path / "cache").iterdir())  # engine cached for the next start
