"""No traceback from any input: every refused value, file or path ends in ``fabguard: error: ...`` with
exit 2 from the CLI and an ``InputError`` (or a subclass) from the API, before long work starts."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from fabguard.anomaly.base import Detector
from fabguard.anomaly.runtime import Inspector
from fabguard.cli import main
from fabguard.errors import InputError, ModelFileError, ResourceError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small dataset (32 px) and a PCA model trained on it."""
    from fabguard.anomaly.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", size=32, n_train=10, n_test_good=2, n_test_defect=1)
    model = root / "pca.pt"
    assert main(["anomaly", "train", "--model", "pca", "--components", "3", "--size", "32", "--data", str(data),
                 "--out", str(model), "--quiet"]) == 0
    return data, model


def run(capsys, *argv) -> str:
    """Run the CLI, expect exit 2 with one error line and no traceback; return stderr."""
    try:
        code = main(["anomaly", *argv])
    except SystemExit as exit:  # argparse refuses a value by exiting
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "fabguard: error:" in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--size", "0"], "--size: the 'input_size' parameter of PCADetector must be an integer in [16, inf"),
    (["--size", "-5"], "--size: the 'input_size' parameter"),
    (["--size", "1"], "--size: the 'input_size' parameter"),
    (["--components", "0"], "--components: the 'n_components' parameter"),
    (["--model", "vae", "--epochs", "0"], "--epochs: the 'epochs' parameter"),
    (["--model", "vae", "--batch-size", "0"], "--batch-size: the 'batch_size' parameter"),
    (["--model", "vae", "--beta", "nan"], "--beta: the 'beta' parameter of VAEDetector must be a finite number"),
    (["--model", "vae", "--size", "40"], "--size: the 'input_size' parameter of VAEDetector must be a multiple of 16"),
    (["--model", "patchcore", "--size", "64", "--crop", "48"], "--crop: the 'crop_size' parameter"),
    (["--model", "patchcore", "--layers", "14,4"], "--layers: the 'layers' parameter"),
    (["--model", "patchcore", "--layers", "4;14"], "--layers"),
    (["--model", "patchcore", "--coreset-ratio", "2"], "--coreset-ratio"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--review-quantile", "0.999"], "'review_quantile'"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1e23"], "--seed"),
    (["--model", "nope"], "invalid choice"),
])
def test_train_refuses_bad_values_naming_the_flag(tmp_path, capsys, argv, message):
    argv = argv if "--model" in argv else ["--model", "pca", *argv]
    err = run(capsys, "train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "m.pt"), *argv)
    assert message in err
    assert "training images" not in err and "learning rate" not in err
    assert not list(tmp_path.iterdir())


def test_a_size_that_cannot_fit_in_memory_is_refused_with_the_figure(tiny, tmp_path, capsys):
    data, _ = tiny
    err = run(capsys, "train", "--model", "pca", "--size", "100000", "--data", str(data),
              "--out", str(tmp_path / "m.pt"))
    assert "needs about" in err and "of memory" in err and "--size" in err
    with pytest.raises(ResourceError):
        from fabguard.anomaly.images import load_dataset

        load_dataset(data, 100000)


def test_outputs_are_checked_before_training(tiny, tmp_path, capsys, monkeypatch):
    data, model = tiny
    trained = []
    monkeypatch.setattr(Detector, "fit", lambda self, *a, **k: trained.append(1))
    err = run(capsys, "train", "--model", "pca", "--data", str(data), "--out", str(data))
    assert "is the input" in err or "is a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
        import fabguard.outputs

        real = os.access
        monkeypatch.setattr(fabguard.outputs.os, "access",
                            lambda path, mode: False if str(path).startswith(str(locked)) else real(path, mode))
    else:
        locked.chmod(0o555)
    err = run(capsys, "train", "--model", "pca", "--data", str(data), "--out", str(locked / "m.pt"))
    assert "no permission to write" in err and not trained
    err = run(capsys, "export", "--model", str(model), "--out", str(model))
    assert "is the input file" in err
    image = next((data / "test" / "good").iterdir())
    err = run(capsys, "inspect", "--artifact", str(model), str(image), "--out", str(image))
    assert "is the input file" in err


def test_evaluate_gallery_zero_and_a_failure_leave_no_output_folder(tiny, tmp_path, capsys, monkeypatch):
    data, model = tiny
    out = tmp_path / "eval"
    err = run(capsys, "evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--gallery", "0")
    assert "--gallery" in err and not out.exists()
    import fabguard.anomaly.evaluate

    def fail(*args, **kwargs):
        raise InputError("simulated failure after the per-model results")

    monkeypatch.setattr(fabguard.anomaly.evaluate, "write_comparison", fail)
    assert "simulated failure" in run(capsys, "evaluate", "--model", str(model), "--data", str(data), "--out", str(out))
    assert not list(tmp_path.iterdir())  # no output folder, no temporary folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    err = run(capsys, "evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "mine"))
    assert "not an earlier evaluation" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("content, message", [
    (b"", "empty (0 bytes)"),
    (b"\x00garbage" * 10, "not a PNG, TIFF, JPEG or BMP file"),
])
def test_undecodable_images_name_the_file_not_a_buffer(tiny, tmp_path, capsys, content, message):
    data, model = tiny
    artifact = tmp_path / "pca.onnx"
    assert main(["anomaly", "export", "--model", str(model), "--out", str(artifact)]) == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    err = run(capsys, "inspect", "--artifact", str(artifact), str(bad))
    assert f"{bad}: cannot decode image" in err and message in err and "BytesIO" not in err
    with pytest.raises(InputError, match=re.escape(f"bytes item 1: cannot decode image: {message}")):
        Inspector(artifact).inspect([(data / "test" / "good" / "000.png").read_bytes(), content])


def _with_metadata(source, target, value):
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "fabguard":
            prop.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def metadata(artifacts):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(artifacts["pca"])).metadata_props}
    return json.loads(props["fabguard"])


@pytest.mark.parametrize("change, message", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: [1, 2], "not a JSON object"),
    (lambda m: {**m, "artifact": "active-network"}, "expected 'anomaly-detector'"),
    (lambda m: {k: v for k, v in m.items() if k != "thresholds"}, "'thresholds' is missing"),
    (lambda m: {k: v for k, v in m.items() if k != "input_size"}, "'input_size' is missing"),
    (lambda m: {**m, "input_size": -1}, "input_size must be in"),
    (lambda m: {**m, "input_size": 10**9}, "input_size must be in"),
    (lambda m: {**m, "input_size": 32}, "graph takes images"),
    (lambda m: {**m, "input_size": "64"}, "'input_size' is missing or not int"),
    (lambda m: {**m, "thresholds": {**m["thresholds"], "review": "x"}}, "threshold 'review' must be a finite number"),
    (lambda m: {**m, "thresholds": {**m["thresholds"], "review": 1e308, "reject": 1.0}}, "out of order"),
    (lambda m: {**m, "thresholds": {"review": 1.0}}, "thresholds must be an object with keys"),
    (lambda m: {**m, "format_version": 99}, "artifact format 99"),
])
def test_crafted_onnx_metadata_is_refused(artifacts, metadata, tmp_path, capsys, change, message):
    path = _with_metadata(artifacts["pca"], tmp_path / "crafted.onnx", change(metadata))
    with pytest.raises(ModelFileError, match=message):
        Inspector(path)
    assert message in run(capsys, "inspect", "--artifact", str(path), str(tmp_path / "x.png"))


def test_foreign_empty_and_truncated_onnx_files_are_refused(artifacts, metadata, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty file \\(0 bytes\\), not an ONNX model"):
        Inspector(tmp_path / "empty.onnx")
    (tmp_path / "cut.onnx").write_bytes(artifacts["pca"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        Inspector(tmp_path / "cut.onnx")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = helper.make_model(graph)
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="without fabguard metadata"):
        Inspector(tmp_path / "foreign.onnx")
    helper.set_model_props(foreign, {"fabguard": json.dumps(metadata)})  # a foreign graph, genuine metadata
    onnx.save(foreign, tmp_path / "disguised.onnx")
    with pytest.raises(ModelFileError, match="graph takes x"):
        Inspector(tmp_path / "disguised.onnx")


@pytest.fixture(scope="module")
def saved_state(detectors, tmp_path_factory):
    path = tmp_path_factory.mktemp("pt") / "pca.pt"
    detectors["pca"].save(path)
    return torch.load(path, weights_only=True)


def _crafted(state, **changes):
    crafted = {**state, "metadata": {**state["metadata"]}}
    for key, value in changes.items():
        if key.startswith("meta_"):
            crafted["metadata"][key[5:]] = value
        else:
            crafted[key] = value
    return crafted


@pytest.mark.parametrize("changes, message", [
    ({"metadata": None}, "expected keys metadata, module"),
    ({"meta_model": "nope"}, "unknown detector 'nope'"),
    ({"meta_model": 3}, "'model' is missing or not str"),
    ({"meta_format_version": 2}, "model format 2"),
    ({"meta_params": {"n_components": "x"}}, "'n_components' parameter"),
    ({"meta_params": {"bogus": 1}}, "model parameters refused"),
    ({"meta_params": {"n_components": 8, "input_size": -1}}, "'input_size' parameter"),
    ({"meta_input_size": 32}, "input size 32 differs"),
    ({"meta_thresholds": {"review": "x"}}, "thresholds must be an object"),
    ({"meta_n_val": 0}, "must be positive"),
    ({"val_scores": [float("nan")] * 6}, "val_scores must be 6 finite numbers"),
    ({"module": {"mean": torch.zeros(3)}}, "does not fit its parameters"),
    ({"module": {"mean": "x"}}, "module state must map names to tensors"),
    ({"extra": {}}, "does not fit its parameters"),
])
def test_crafted_model_files_are_refused(saved_state, tmp_path, capsys, changes, message):
    path = tmp_path / "crafted.pt"
    torch.save(_crafted(saved_state, **changes), path)
    with pytest.raises(ModelFileError, match=message):
        Detector.load(path)
    assert message in run(capsys, "export", "--model", str(path), "--out", str(tmp_path / "x.onnx"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_model_file_whose_pickle_would_run_code_is_refused_and_runs_nothing(saved_state, tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({**saved_state, "extra": {"x": _RunsCode(marker)}}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    for path in (tmp_path / "evil.pt", tmp_path / "evil.pkl"):
        with pytest.raises(ModelFileError, match="not a fabguard anomaly model"):
            Detector.load(path)
        run(capsys, "export", "--model", str(path), "--out", str(tmp_path / "x.onnx"))
        run(capsys, "evaluate", "--model", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "e"))
    assert not marker.exists()


def test_other_model_paths(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        Detector.load(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="is a folder"):
        Detector.load(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelFileError, match="not a fabguard anomaly model"):
        Detector.load(tmp_path / "list.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a fabguard anomaly model"):
        Detector.load(tmp_path / "empty.pt")


def test_inspect_api_refuses_huge_and_bad_batches(artifacts):
    inspector = Inspector(artifacts["pca"])
    with pytest.raises(InputError, match="max_batch"):
        Inspector(artifacts["pca"], max_batch=0)
    with pytest.raises(InputError, match="numpy batch"):
        inspector.inspect(np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(InputError, match="no images given"):
        inspector.inspect([])
