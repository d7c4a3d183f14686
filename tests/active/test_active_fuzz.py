"""Hypothesis over ``fabguard active`` arguments and crafted model folders: every run ends in exit code 0
or 2 (``fabguard: error: ...``), never a traceback. In-process through ``fabguard.cli.main``; train and
evaluate always get at least one refused value, so no example starts a long fit (< 30 s in all)."""

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabguard.cli import main

NUMBERS = st.sampled_from(["0", "1", "-1", "0.5", "2", "nan", "inf", "-inf", "1e308", "1e23", "abc", "", "0x10",
                           "4294967296", "3", "1024", "1025", "100000000"])
BAD = {"--members": "0", "--threads": "0", "--seeds": "0", "--test-fraction": "1", "--fpr": "nan",
       "--sample-rate": "1.5", "--lambda": "2", "--seed": "-1"}
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)


def cli(argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


@pytest.fixture(scope="module")
def inputs(saved, table, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    test = table[1].iloc[:60]
    tables = {"good": test, "inf": test.assign(basic_1=np.inf), "text": test.assign(basic_2="x"),
              "empty": test.iloc[:0], "no_basic": test.drop(columns="basic_0"),
              "partial_advanced": test.drop(columns="advanced_1")}
    paths = {}
    for name, frame in tables.items():
        paths[name] = root / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    (root / "garbage.csv").write_bytes(b"\x00\xff\xfe garbage")
    paths["garbage"] = root / "garbage.csv"
    return {"model": saved[0], "tables": paths, "root": root}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(["route", "simulate", "train", "evaluate"]), data=st.data())
def test_cli_arguments_never_end_in_a_traceback(inputs, command, data):
    out = str(inputs["root"] / ("out.csv" if command in ("route", "simulate") else "out"))
    if command == "route":
        argv = ["route", "--model", str(data.draw(st.sampled_from([inputs["model"], inputs["root"]]))),
                "--data", str(data.draw(st.sampled_from(sorted(inputs["tables"].values())))), "--out", out]
        for option in data.draw(st.lists(st.sampled_from(["--budget", "--money", "--seed", "--threads"]),
                                         max_size=3, unique=True)):
            argv += [option, data.draw(NUMBERS)]
        argv += data.draw(st.sampled_from([[], ["--mode", "stream"], ["--mode", "later"], ["--rule", "margin"],
                                           ["--rule", "best"]]))
    elif command == "simulate":
        argv = ["simulate", "--out", out, "--n-products", data.draw(st.sampled_from(["20", "300", "0", "1e10",
                                                                                       "x", "-5"]))]
        for option in data.draw(st.lists(st.sampled_from(["--info-gap", "--label-noise", "--fault-rate",
                                                          "--sample-rate", "--seed"]), max_size=3, unique=True)):
            argv += [option, data.draw(NUMBERS)]
    else:
        bad = data.draw(st.sampled_from([k for k in BAD if command == "evaluate" or k not in
                                         ("--seeds", "--test-fraction", "--fpr")]))
        argv = [command, "--dataset", "simulate", "--out", out, bad, BAD[bad]]
        for option in data.draw(st.lists(st.sampled_from(["--budget", "--temperature", "--cost-miss"]),
                                         max_size=2, unique=True)):
            if command == "train" or option != "--budget":
                argv += [option, data.draw(NUMBERS)]
    code, err = cli(["active", *argv])
    assert code in (0, 2) and "Traceback" not in err, (argv, err)
    if code == 2:
        assert "fabguard: error:" in err


def crafted(manifest: dict, path: list, value):
    """``manifest`` with the entry at ``path`` (keys into nested dicts) replaced by ``value``."""
    crafted = json.loads(json.dumps(manifest))
    node = crafted
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return crafted


def paths_of(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield [*prefix, key]
            yield from paths_of(value, (*prefix, key))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_crafted_manifests_are_refused_cleanly(inputs, data):
    folder = inputs["root"] / "crafted"
    if not folder.exists():
        shutil.copytree(inputs["model"], folder)
    manifest = json.loads((inputs["model"] / "manifest.json").read_text())
    path = data.draw(st.sampled_from(sorted(paths_of(manifest), key=str)))
    text = json.dumps(crafted(manifest, path, data.draw(JSON)))
    (folder / "manifest.json").write_text(data.draw(st.sampled_from([text, text[: len(text) // 2], "[]"])))
    code, err = cli(["active", "route", "--model", str(folder), "--data", str(inputs["tables"]["good"]),
                     "--budget", "0.2", "--out", str(inputs["root"] / "routed.csv")])
    assert code in (0, 2) and "Traceback" not in err, (path, err)


@pytest.mark.parametrize("part, content", [
    ("arrays.npz", b""), ("arrays.npz", b"PK\x03\x04 not a zip"), ("student.onnx", b""),
    ("teacher.onnx", b"\x08\x07garbage"), ("router.onnx", None), ("arrays.npz", "object"),
])
def test_crafted_parts_with_matching_hashes_are_refused(inputs, tmp_path, part, content):
    """Parts replaced and their hashes updated in the manifest (a deliberate forgery, not damage)."""
    from fabguard.active.export import _sha256

    folder = shutil.copytree(inputs["model"], tmp_path / "model")
    if content is None:  # a graph from the same model under another name
        content = (folder / "student.onnx").read_bytes()
    elif content == "object":  # an object array: loading it would need pickle
        buffer = io.BytesIO()
        np.savez(buffer, **{"basic.median": np.array([object()], dtype=object)})
        content = buffer.getvalue()
    (folder / part).write_bytes(content)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"][part] = _sha256(folder / part)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, err = cli(["active", "route", "--model", str(folder), "--data", str(inputs["tables"]["good"]),
                     "--out", str(tmp_path / "routed.csv")])
    assert code == 2 and "Traceback" not in err and part in err
