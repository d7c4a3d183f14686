"""fabguard.runtime: metadata checked before a session opens; one session policy; batches cut alike."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fabguard.errors import InputError, ModelFileError
from fabguard.runtime import metadata as md
from fabguard.runtime.parity import float32_bound, max_abs_diff
from fabguard.runtime.session import PROVIDER_ORDER, Runtime, create_session, provider_options

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 7


def linear_model(props: dict | None = None) -> onnx.ModelProto:
    """y = x @ W, dynamic batch: a graph small enough to check exactly."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(WEIGHTS, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if props is not None:
        helper.set_model_props(model, props)
    return model


class Linear(Runtime):
    artifact = "test-linear"
    required = {"width": int, "name": str}


def save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def test_attached_metadata_round_trips_and_a_runtime_runs_it_in_chunks(tmp_path):
    model = linear_model()
    md.attach(model, {"artifact": "test-linear", "width": 4, "name": "lin"})
    path = save(tmp_path, model)
    metadata, session = Linear().open(path, threads=1)
    assert metadata == {"artifact": "test-linear", "width": 4, "name": "lin", "format_version": md.FORMAT_VERSION}
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    (y,) = Runtime.run(session, x, max_batch=3)  # chunks of 3, 3, 3, 1
    # each output is a dot product of 4 float32 terms: two summation orders differ by at most the bound
    bound = float32_bound(float((np.abs(x) @ np.abs(WEIGHTS)).max()), depth=4)
    assert max_abs_diff(y, x.astype(np.float64) @ WEIGHTS.astype(np.float64)) <= bound
    assert y.shape == (10, 3)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file \\(0 bytes\\)"),
    (b"\x08\x07", "no graph"),  # a valid protobuf: ir_version 7, nothing else
    (b"\x00\xffgarbage" * 10, "not an ONNX model"),
    (None, "without fabguard metadata"),
    ({"fabguard": "{not json"}, "not valid JSON"),
    ({"fabguard": "[1, 2]"}, "not a JSON object"),
    ({"fabguard": json.dumps({"artifact": "anomaly-detector", "format_version": 1})}, "expected 'test-linear'"),
    ({"fabguard": json.dumps({"artifact": "test-linear", "format_version": 99})}, "format 99"),
    ({"fabguard": json.dumps({"artifact": "test-linear", "format_version": 1, "name": "x"})}, "'width' is missing"),
    ({"fabguard": json.dumps({"artifact": "test-linear", "format_version": 1, "name": "x", "width": "4"})},
     "'width' is missing or not int"),
    ({"fabguard": json.dumps({"artifact": "test-linear", "format_version": 1, "name": "x", "width": True})},
     "not int \\(got True\\)"),
])
def test_crafted_or_foreign_files_are_refused_before_a_session(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        onnx.save_model(linear_model(content), str(path))
    with pytest.raises(ModelFileError, match=message) as info:
        Linear().open(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="no such model artifact"):
        md.read_metadata(tmp_path / "absent.onnx", "test-linear")
    with pytest.raises(ModelFileError, match="is a folder"):
        md.read_metadata(tmp_path, "test-linear")


def test_a_graph_onnx_runtime_cannot_load_is_a_model_file_error(tmp_path):
    model = linear_model()
    model.graph.node[0].op_type = "NoSuchOp"
    md.attach(model, {"artifact": "test-linear", "width": 4, "name": "x"})
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load"):
        Linear().open(save(tmp_path, model))


def test_session_policy_refusals(tmp_path):
    path = save(tmp_path, linear_model())
    with pytest.raises(InputError, match="unknown to ONNX Runtime"):
        create_session(path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(InputError, match="threads must be a positive integer"):
        create_session(path, threads=0)
    session = create_session(path, providers=["CPUExecutionProvider"], threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 1


def test_tensorrt_profile_spans_batch_one_to_max():
    options = provider_options("TensorrtExecutionProvider", lambda n: f"images:{n}x3x224x224", 64, "cache", False)
    assert options["trt_profile_min_shapes"] == "images:1x3x224x224"
    assert options["trt_profile_max_shapes"] == "images:64x3x224x224"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == "cache"
    assert provider_options("CUDAExecutionProvider", None, 64, "cache", fp16=False) == {"use_tf32": 0}
    assert PROVIDER_ORDER[-1] == "CPUExecutionProvider"


def test_float32_bound_covers_real_reordering():
    """Sum 10,000 float32 terms forwards, backwards and pairwise: every difference is within the bound."""
    x = np.random.default_rng(1).normal(size=10_000).astype(np.float32)
    forward = np.float32(0)
    for v in x:
        forward = np.float32(forward + v)
    pairwise = np.sum(x, dtype=np.float32)  # numpy's pairwise summation
    backward = np.float32(0)
    for v in x[::-1]:
        backward = np.float32(backward + v)
    bound = float32_bound(np.abs(x).sum(dtype=np.float64), len(x))
    assert abs(float(forward) - float(pairwise)) <= bound
    assert abs(float(forward) - float(backward)) <= bound
    assert abs(float(forward) - float(backward)) > 0  # the orders really differ, so the check is not vacuous
