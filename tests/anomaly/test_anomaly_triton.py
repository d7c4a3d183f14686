"""Triton model repository: config.pbtxt parsed with the model-config protobuf tritonclient ships."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fabguard.anomaly.runtime import Inspector
from fabguard.anomaly.triton import QUEUE_DELAY_US, write_repository
from fabguard.cli import main
from fabguard.errors import InputError

FP32 = model_config_pb2.DataType.Value("TYPE_FP32")


def _parse(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("kind", ["pca", "feature-vae"])
def test_repository_config_matches_the_graph(artifacts, tmp_path, kind):
    folder = write_repository(artifacts[kind], tmp_path / "repo", name="wafer", version=3)
    config = _parse(folder)
    assert config.name == "wafer" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    session = ort.InferenceSession(str(folder / "3" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert (folder / "3" / "model.onnx").read_bytes() == artifacts[kind].read_bytes()
    (graph_input,) = session.get_inputs()
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [(graph_input.name, [3, 64, 64], FP32)]
    outputs = {o.name: o for o in config.output}
    assert list(outputs) == [o.name for o in session.get_outputs()]  # score, heatmap (, latent)
    assert list(outputs["score"].dims) == [1] and list(outputs["score"].reshape.shape) == []  # (N,): batch only
    assert list(outputs["heatmap"].dims) == [64, 64]
    if kind == "feature-vae":
        assert list(outputs["latent"].dims) == [128]
    assert all(o.data_type == FP32 for o in config.output)
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert json.loads(config.parameters["fabguard"].string_value) == Inspector.read(artifacts[kind])


def test_tensorrt_plan_repository_and_refusals(artifacts, tmp_path):
    engine = tmp_path / "pca.engine"
    engine.write_bytes(b"serialized engine")  # the layout does not read the engine; building one needs a GPU
    folder = write_repository(artifacts["pca"], tmp_path / "repo", platform="tensorrt_plan", engine=engine)
    assert folder.name == "pca" and _parse(folder).platform == "tensorrt_plan"
    assert (folder / "1" / "model.plan").read_bytes() == b"serialized engine"
    with pytest.raises(InputError, match="give the engine"):
        write_repository(artifacts["pca"], tmp_path / "repo", platform="tensorrt_plan")
    with pytest.raises(InputError, match="platform 'torch'"):
        write_repository(artifacts["pca"], tmp_path / "repo", platform="torch")
    with pytest.raises(InputError, match="model name 'a/b'"):
        write_repository(artifacts["pca"], tmp_path / "repo", name="a/b")
    with pytest.raises(InputError, match="version must be a positive integer"):
        write_repository(artifacts["pca"], tmp_path / "repo", version=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="expected a folder path"):
        write_repository(artifacts["pca"], tmp_path / "file")


def test_export_command_writes_the_repository_beside_other_models(normals, tmp_path, capsys):
    from fabguard.anomaly.pca import PCADetector

    model = tmp_path / "pca.pt"
    PCADetector(n_components=4, input_size=64).fit(normals.images).save(model)
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    assert main(["anomaly", "export", "--model", str(model), "--out", str(tmp_path / "m.onnx"),
                 "--triton", str(repo), "--triton-name", "line7"]) == 0
    assert _parse(repo / "line7").name == "line7" and (repo / "line7" / "1" / "model.onnx").is_file()
    assert (repo / "other" / "1").is_dir()
    assert main(["anomaly", "export", "--model", str(model), "--out", str(tmp_path / "n.onnx"), "--triton", str(repo),
                 "--triton-platform", "tensorrt_plan"]) == 2
    assert "also give --tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()  # refused before the export
