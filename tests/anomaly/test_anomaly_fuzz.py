"""Hypothesis over the anomaly CLI's arguments and over crafted artifacts: every outcome is a result or a
refusal (exit 2, ``InputError``), never a traceback. Bounded to a few seconds per test: in-process, small
files, data paths that make every command stop before long work."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabguard.anomaly.base import Detector
from fabguard.anomaly.runtime import Inspector
from fabguard.cli import main
from fabguard.errors import InputError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = st.sampled_from(["0", "-5", "1", "2", "3", "16", "32", "0.5", "1.0", "nan", "inf", "-inf", "1e23",
                          "1e308", "", "abc", "4,14", "4;14", "14,4", "100000", "none", "wafer", "-1", "0x10"])
TRAIN_FLAGS = ["--size", "--components", "--epochs", "--beta", "--batch-size", "--patience", "--augment",
               "--coreset-ratio", "--crop", "--layers", "--val-fraction", "--review-quantile",
               "--reject-quantile", "--seed"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse refuses a value by exiting
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _flags(draw, flags):
    chosen = draw(st.lists(st.sampled_from(flags), max_size=4, unique=True))
    return [item for flag in chosen for item in (flag, draw(VALUES))]


@FUZZ
@given(data=st.data())
def test_cli_arguments_end_in_a_result_or_a_clean_refusal(folder, artifacts, capsys, data):
    draw = data.draw
    missing = str(folder / "missing")
    command = draw(st.sampled_from(["train", "evaluate", "export", "inspect", "synthetic"]))
    if command == "train":
        model = draw(st.sampled_from(["pca", "vae", "patchcore", "nope"]))
        argv = ["--model", model, "--data", draw(st.sampled_from([missing, str(folder)])),
                "--out", str(folder / "m.pt"), *_flags(draw, TRAIN_FLAGS)]
    elif command == "evaluate":
        argv = ["--model", draw(st.sampled_from([missing, str(artifacts["pca"])])), "--data", missing,
                "--out", str(folder / "eval"), *_flags(draw, ["--gallery", "--seed"])]
    elif command == "export":
        argv = ["--model", draw(st.sampled_from([missing, str(artifacts["pca"])])), "--out",
                draw(st.sampled_from([str(folder / "x.onnx"), str(folder), str(artifacts["pca"])])),
                *_flags(draw, ["--tolerance", "--seed"])]
    elif command == "inspect":
        argv = ["--artifact", draw(st.sampled_from([missing, str(artifacts["pca"]), str(folder)])), missing,
                *_flags(draw, ["--out", "--heatmaps", "--provider", "--seed"])]
    else:
        (folder / "full").mkdir(exist_ok=True)
        (folder / "full" / "f").write_text("x")
        argv = ["--out", str(folder / "full"), *_flags(draw, ["--size", "--train", "--seed"])]
    code, output = run_cli(["anomaly", command, *argv], capsys)
    assert code in (0, 2) and "Traceback" not in output, (argv, output)


@FUZZ
@given(content=st.binary(max_size=300), cut=st.floats(0, 1))
def test_random_and_truncated_files_are_refused_as_models_and_artifacts(folder, artifacts, content, cut):
    genuine = artifacts["pca"].read_bytes()
    for blob in (content, genuine[:int(cut * (len(genuine) - 1))]):
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".onnx") as handle:
            Path(handle.name).write_bytes(blob)
            with pytest.raises(InputError):
                Inspector(handle.name)
            with pytest.raises(InputError):
                Detector.load(handle.name)


@pytest.fixture(scope="module")
def genuine_metadata(artifacts):
    import onnx

    return json.loads({p.key: p.value for p in onnx.load(str(artifacts["pca"])).metadata_props}["fabguard"])


@FUZZ
@given(data=st.data())
def test_onnx_with_crafted_metadata_is_served_or_refused(folder, artifacts, genuine_metadata, data):
    import numpy as np
    import onnx

    meta = dict(genuine_metadata)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(meta) + ["extra"]))
        if key == "thresholds" and isinstance(meta[key], dict) and data.draw(st.booleans()):
            meta[key] = {**meta[key], data.draw(st.sampled_from(sorted(meta[key]) + ["extra"])): data.draw(JSON)}
        else:
            meta[key] = data.draw(JSON)
    model = onnx.load(str(artifacts["pca"]))
    model.metadata_props[0].value = json.dumps(meta) if data.draw(st.booleans()) else data.draw(st.text(max_size=30))
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".onnx") as handle:
        onnx.save(model, handle.name)
        try:
            inspector = Inspector(handle.name)
        except InputError:
            return
        assert len(inspector.inspect(np.zeros((2, 64, 64), np.uint8))) == 2


@pytest.fixture(scope="module")
def genuine_state(detectors, folder):
    detectors["pca"].save(folder / "pca.pt")
    return torch.load(folder / "pca.pt", weights_only=True)


@FUZZ
@given(data=st.data())
def test_crafted_model_files_are_loaded_or_refused(folder, genuine_state, data):
    state = {**genuine_state, "metadata": {**genuine_state["metadata"]}}
    for _ in range(data.draw(st.integers(1, 3))):
        part = data.draw(st.sampled_from(["metadata", "top", "params"]))
        if part == "metadata" and isinstance(state["metadata"], dict):
            state["metadata"][data.draw(st.sampled_from(sorted(state["metadata"]) + ["extra"]))] = data.draw(JSON)
        elif part == "params" and isinstance(state["metadata"], dict) \
                and isinstance(state["metadata"].get("params"), dict):
            params = state["metadata"]["params"] = {**state["metadata"]["params"]}
            params[data.draw(st.sampled_from(sorted(params) + ["bogus"]))] = data.draw(JSON)
        else:
            state[data.draw(st.sampled_from(sorted(state)))] = data.draw(JSON)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".pt") as handle:
        torch.save(state, handle.name)
        try:
            detector = Detector.load(handle.name)
        except InputError:
            return
        assert detector.thresholds_.review <= detector.thresholds_.reject
