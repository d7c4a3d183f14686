"""ONNX export (preprocessing + scoring in the graph) and the ONNX Runtime Inspector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.anomaly.conftest import latent_bound, parity_bounds
from fabguard.anomaly.export import parity
from fabguard.anomaly.images import decode
from fabguard.anomaly.runtime import Inspector
from fabguard.errors import InputError

KINDS = ("pca", "vae", "patchcore", "feature-vae")


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_matches_pytorch(detectors, artifacts, test_set, kind):
    rng = np.random.default_rng(0)
    noise = rng.random((5, 3, 64, 64), dtype=np.float32)
    for images in (test_set.images, test_set.images[:1], noise):  # several batch sizes: dynamic batch
        diff = parity(detectors[kind], artifacts[kind], images)
        score_bound, heatmap_bound = parity_bounds(detectors[kind], images)
        assert diff["max_abs_diff_score"] <= score_bound, (diff, score_bound)
        assert diff["max_abs_diff_heatmap"] <= heatmap_bound, (diff, heatmap_bound)
        if detectors[kind].has_latent:
            assert diff["max_abs_diff_latent"] <= latent_bound(detectors[kind], images), diff
        else:
            assert "max_abs_diff_latent" not in diff


@pytest.mark.parametrize("kind", KINDS)
def test_artifact_has_dynamic_batch_and_metadata(detectors, artifacts, kind):
    session = ort.InferenceSession(str(artifacts[kind]), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and isinstance(image_input.shape[0], str)
    assert image_input.shape[1:] == [3, 64, 64]
    latent = ["latent"] if detectors[kind].has_latent else []  # the VAEs' posterior mean
    assert [o.name for o in session.get_outputs()] == ["score", "heatmap", *latent]
    meta = Inspector.read(artifacts[kind])
    detector = detectors[kind]
    assert meta["model"] == kind and meta["input_size"] == 64
    assert meta["thresholds"] == detector.thresholds_.as_dict()
    assert meta["train_fingerprint"] == detector.fingerprint_
    assert meta["fabguard_version"] and meta["artifact"] == "anomaly-detector"


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
    bound, _ = parity_bounds(detectors["patchcore"], test_set.images)
    np.testing.assert_allclose(by_file.scores, expected, rtol=0, atol=bound)
    np.testing.assert_array_equal(by_file.decisions, detectors["patchcore"].decide(by_file.scores))
    one = inspector.inspect(files[0])  # batch 1 may sum in another order than batch 16: same bound
    assert len(one) == 1 and one.scores[0] == pytest.approx(by_file.scores[0], abs=2 * bound)


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
    with pytest.raises(InputError, match="bytes item 0: cannot decode image: not a PNG"):
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
    with pytest.raises(InputError, match="unknown to ONNX Runtime"):
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


def test_sessions_open_and_the_tensorrt_profile_covers_the_artifact(artifacts, monkeypatch, tmp_path):
    """A real CPU session opens and serves batch 1 and max_batch; where TensorRT is asked for, its profile
    names the graph's input at the artifact's size for batch 1..max_batch (captured: no TensorRT here)."""
    inspector = Inspector(artifacts["pca"], providers=["CPUExecutionProvider"], max_batch=4)
    assert inspector.providers == ["CPUExecutionProvider"]
    for n in (1, 4, 9):  # 9 is cut into 4 + 4 + 1
        assert inspector.inspect(np.zeros((n, 64, 64), np.uint8)).heatmaps.shape == (n, 64, 64)
    seen = {}
    real = ort.InferenceSession

    def capture(path, options, providers):
        seen.update(dict(providers))
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", capture)
    Inspector(artifacts["vae"], max_batch=16, cache_dir=tmp_path / "cache")
    trt = seen["TensorrtExecutionProvider"]
    name = real(str(artifacts["vae"]), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    profile = {key: trt[f"trt_profile_{key}_shapes"] for key in ("min", "opt", "max")}
    shapes = {key: value.split(":") for key, value in profile.items()}
    assert {n for n, _ in shapes.values()} == {name}
    dims = {key: [int(v) for v in shape.split("x")] for key, (_, shape) in shapes.items()}
    assert dims["min"] == [1, 3, 64, 64] and dims["max"] == [16, 3, 64, 64]
    assert 1 <= dims["opt"][0] <= 16 and dims["opt"][1:] == [3, 64, 64]
    assert trt["trt_engine_cache_enable"] and (tmp_path / "cache").is_dir()


def test_png_written_by_inspector_user_round_trip(artifacts, tmp_path):
    """A 16-bit PNG of the same picture scores like its 8-bit version (same [0, 1] scaling)."""
    rng = np.random.default_rng(2)
    eight = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "a8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    result = Inspector(artifacts["vae"]).inspect([tmp_path / "a8.png", tmp_path / "a16.png"])
    # v / 255 and 257 v / 65535 are the same real number, rounded to float32 once each: equal inputs
    assert result.scores[0] == result.scores[1]


@pytest.mark.parametrize("kind", ("feature-vae", "pca"))
def test_inspector_returns_the_latent_vector_of_a_model_that_has_one(detectors, artifacts, test_set, kind):
    """The service's latent_vector: the artifact's third output, the detector's ``latent`` within the
    float32 bound; an artifact of two outputs (PCA, PatchCore, any earlier export) serves without it."""
    inspector = Inspector(artifacts[kind])
    result = inspector.inspect(test_set.images)
    if kind == "pca":
        assert not inspector.has_latent and result.latents is None
        return
    expected = detectors[kind].latent(test_set.images)
    assert inspector.has_latent and result.latents.shape == (len(test_set), 128)
    np.testing.assert_allclose(result.latents, expected, rtol=0, atol=latent_bound(detectors[kind], test_set.images))


def test_a_graph_with_another_third_output_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fabguard.runtime.metadata import attach

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("score", "heatmap", "extra")]
    nodes = [helper.make_node("Identity", ["images"], [n]) for n in ("score", "heatmap", "extra")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs))
    thresholds = {"review": 1.0, "reject": 2.0, "review_quantile": 0.95, "reject_quantile": 0.995, "n_val": 5}
    attach(model, {"artifact": "anomaly-detector", "model": "x", "input_size": 16, "thresholds": thresholds,
                   "train_fingerprint": "f"})
    onnx.save(model, tmp_path / "three.onnx")
    with pytest.raises(InputError, match="optionally followed by 'latent'"):
        Inspector(tmp_path / "three.onnx")
