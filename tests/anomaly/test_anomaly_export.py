"""ONNX export (preprocessing + scoring in the graph) and the ONNX Runtime Inspector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from fabguard.anomaly.export import parity
from fabguard.anomaly.images import decode
from fabguard.anomaly.inspector import Inspector, provider_options, read_metadata
from fabguard.errors import InputError

KINDS = ("pca", "vae", "patchcore")


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_matches_pytorch(detectors, artifacts, test_set, kind):
    rng = np.random.default_rng(0)
    noise = rng.random((5, 3, 64, 64), dtype=np.float32)
    for images in (test_set.images, test_set.images[:1], noise):  # several batch sizes: dynamic batch
        diff = parity(detectors[kind], artifacts[kind], images)
        assert diff["max_abs_diff_score"] <= 1e-4, diff
        assert diff["max_abs_diff_heatmap"] <= 1e-4, diff


@pytest.mark.parametrize("kind", KINDS)
def test_artifact_has_dynamic_batch_and_metadata(detectors, artifacts, kind):
    session = ort.InferenceSession(str(artifacts[kind]), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and isinstance(image_input.shape[0], str)
    assert image_input.shape[1:] == [3, 64, 64]
    assert [o.name for o in session.get_outputs()] == ["score", "heatmap"]
    meta = read_metadata(artifacts[kind])
    detector = detectors[kind]
    assert meta["model"] == kind and meta["input_size"] == 64
    assert meta["thresholds"] == detector.thresholds_.as_dict()
    assert meta["train_fingerprint"] == detector.fingerprint_
    assert meta["fabguard_version"]


def test_inspector_scores_arrays_files_and_bytes_alike(detectors, artifacts, test_set, synthetic_root):
    inspector = Inspector(artifacts["patchcore"])
    assert inspector.providers[0] in ort.get_available_providers()
    files = [Path(p) for p in test_set.paths]
    by_file = inspector.inspect(files)
    by_bytes = inspector.inspect([f.read_bytes() for f in files])
    by_uint8 = inspector.inspect(np.stack([decode(f) for f in files]))  # (N, H, W) uint8
    by_float = inspector.inspect(test_set.images)  # the model batch itself
    for other in (by_bytes, by_uint8, by_float):
        np.testing.assert_array_equal(by_file.scores, other.scores)
        np.testing.assert_array_equal(by_file.decisions, other.decisions)
    assert by_file.heatmaps.shape == (len(files), 64, 64)
    expected, _ = detectors["patchcore"].score(test_set.images)
    np.testing.assert_allclose(by_file.scores, expected, atol=1e-4)
    np.testing.assert_array_equal(by_file.decisions, detectors["patchcore"].decide(by_file.scores))
    one = inspector.inspect(files[0])
    assert len(one) == 1 and one.scores[0] == pytest.approx(by_file.scores[0], abs=1e-4)


def test_inspector_resizes_rgb_and_channel_first_input(artifacts):
    inspector = Inspector(artifacts["vae"], max_batch=2)
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (3, 100, 80, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    a, b = inspector.inspect(hwc), inspector.inspect(chw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.heatmaps.shape == (3, 64, 64) and set(a.decisions) <= {"PASS", "REVIEW", "REJECT"}


def test_inspector_errors(artifacts, tmp_path):
    inspector = Inspector(artifacts["pca"])
    with pytest.raises(InputError, match="bytes: cannot decode"):
        inspector.inspect(b"definitely not an image")
    with pytest.raises(InputError, match="numpy batch"):
        inspector.inspect(np.zeros((5,), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        inspector.inspect(np.full((1, 8, 8), np.nan, np.float32))
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not an ONNX model"):
        Inspector(tmp_path / "x.onnx")
    with pytest.raises(InputError, match="no such model artifact"):
        Inspector(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="none of the providers"):
        Inspector(artifacts["pca"], providers=["NoSuchExecutionProvider"])


def test_onnx_without_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="without fabguard metadata"):
        Inspector(tmp_path / "plain.onnx")


def test_tensorrt_provider_gets_engine_cache_and_shape_profile(tmp_path):
    options = provider_options("TensorrtExecutionProvider", 256, 64, tmp_path, fp16=False)
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_profile_min_shapes"] == "images:1x3x256x256"
    assert options["trt_profile_max_shapes"] == "images:64x3x256x256"
    assert provider_options("CPUExecutionProvider", 256, 64, tmp_path, False) == {}
    assert provider_options("CUDAExecutionProvider", 256, 64, tmp_path, False) == {"use_tf32": 0}


def test_png_written_by_inspector_user_round_trip(artifacts, tmp_path):
    """A 16-bit PNG of the same picture scores like its 8-bit version (same [0, 1] scaling)."""
    rng = np.random.default_rng(2)
    eight = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "a8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    result = Inspector(artifacts["vae"]).inspect([tmp_path / "a8.png", tmp_path / "a16.png"])
    assert result.scores[0] == pytest.approx(result.scores[1], abs=1e-6)
