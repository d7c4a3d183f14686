"""Refusals found by a hostile-input pass: crafted manifests (structure, types, file names), unbounded
``--threads`` / ``--members``, raw errors from the Python API, unknown output suffixes, and Ctrl-C at the
commit point of a save. Every case is refused with an ``InputError`` (CLI: exit 2) before work starts."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest

from fabguard.active import export
from fabguard.active.data import read_table
from fabguard.active.estimator import ActiveInspector
from fabguard.active.models import NetClassifier, NetRegressor
from fabguard.active.router import Router
from fabguard.cli import main
from fabguard.errors import InputError, InvalidParameterError, ModelFileError


def run(capsys, *argv):
    try:
        code = main(["active", *argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def crafted_folder(saved, tmp_path, edit, name="model"):
    """A copy of the saved model whose manifest ``edit(manifest)`` changed; written as Python's json writes
    it (NaN and Infinity included), as a crafted file could be."""
    folder = shutil.copytree(saved[0], tmp_path / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def setter(path, value):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def test_roles_given_as_a_string_name_the_manifest_key(saved, table, tmp_path, capsys):
    folder = crafted_folder(saved, tmp_path, setter(["roles", "basic"], "basic_0"))
    with pytest.raises(ModelFileError, match=r"manifest.json: roles.basic must be a list of column names"):
        Router.load(folder)
    data = tmp_path / "t.csv"
    table[1].to_csv(data, index=False)
    code, _, err = run(capsys, "route", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "r.csv"))
    assert code == 2 and "roles.basic" in err and "Traceback" not in err and not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("value", ["../../../etc/passwd", "/etc/passwd", "student.onnx/..", "teacher.onnx",
                                   "sub/student.onnx", "", None, 5])
def test_graph_file_names_must_be_the_plain_names_in_the_folder(saved, tmp_path, value):
    folder = crafted_folder(saved, tmp_path, setter(["graphs", "student", "file"], value))
    with pytest.raises(ModelFileError, match=r"graphs.student.file must be 'student.onnx'"):
        Router.load(folder)


@pytest.mark.parametrize("path, value, key", [
    (["roles", "advanced"], "advanced_0", "roles.advanced"),
    (["roles", "categorical"], [1], "roles.categorical"),
    (["roles", "label"], ["fault"], "roles.label"),
    (["roles", "time"], 3, "roles.time"),
    (["roles"], ["fault"], "roles"),
    (["roles", "extra"], [], "roles must have exactly the keys"),
    (["cost", "miss"], float("nan"), "cost.miss"),
    (["cost", "basic"], -1, "cost.basic"),
    (["cost", "advanced"], "10", "cost.advanced"),
    (["budget"], float("inf"), "budget"),
    (["budget"], 1.5, "budget"),
    (["best_budget", "random"], 2, "best_budget.random"),
    (["value_members"], True, "value_members"),
    (["value_members"], 10**6, "value_members"),
    (["rule"], ["value_brier"], "rule"),
    (["rules", "margin"], [0.5], "rules.margin"),
    (["params"], [], "params"),
    (["params", "hidden"], [float("inf")], r"params.hidden\[0\]"),
    (["preprocessing", "basic", "columns"], ["basic_1", "basic_0", "basic_2", "basic_3", "basic_4", "basic_5"],
     "preprocessing.basic.columns"),
    (["preprocessing", "full", "categorical"], ["basic_0"], "preprocessing.full.categorical"),
    (["preprocessing", "basic", "categories"], "x", "preprocessing.basic.categories"),
    (["calibration", "student", "coef"], float("inf"), "calibration.student.coef"),
    (["calibration", "teacher", "method"], "sigmoid", "calibration.teacher.method"),
    (["graphs", "router", "inputs"], -1, "graphs.router.inputs"),
    (["graphs", "teacher", "outputs"], 2.5, "graphs.teacher.outputs"),
    (["graphs", "student", "float32_bound"], "small", "graphs.student.float32_bound"),
    (["graphs", "extra"], {}, "graphs must have exactly the keys"),
    (["sha256", "../x"], "0" * 64, "sha256 must have exactly the keys"),
    (["sha256", "arrays.npz"], "not a hash", "sha256.arrays.npz"),
    (["model"], 7, "model"),
    (["extra"], 1, r"the manifest must have exactly the keys .*; unknown \[.extra.\]"),
])
def test_every_manifest_key_is_checked_by_structure_and_type(saved, tmp_path, path, value, key):
    folder = crafted_folder(saved, tmp_path, setter(path, value))
    with pytest.raises(ModelFileError, match=rf"manifest.json: {key}"):
        Router.load(folder)


def test_a_manifest_without_a_key_or_nested_too_deeply_is_refused(saved, tmp_path):
    folder = crafted_folder(saved, tmp_path, lambda m: m.pop("calibration"))
    with pytest.raises(ModelFileError, match=r"must have exactly the keys .*missing \['calibration'\]"):
        Router.load(folder)
    (folder / "manifest.json").write_text('{"format": "fabguard-active/2", "params": ' + "[" * 100_000)
    with pytest.raises(ModelFileError, match=r"manifest.json"):
        Router.load(folder)
    (folder / "manifest.json").write_text(json.dumps({**json.loads((saved[0] / "manifest.json").read_text()),
                                                      "budget": 10**400}))
    with pytest.raises(ModelFileError, match=r"manifest.json: budget must be a finite number"):
        Router.load(folder)


@pytest.mark.parametrize("directory", [5, None, 1.5, b"model", ["model"]])
def test_router_load_refuses_a_non_path(directory):
    with pytest.raises(InvalidParameterError, match=r"model folder: expected a path"):
        Router.load(directory)
    with pytest.raises(InputError):
        export.load(directory)


@pytest.mark.parametrize("threads", [0, -1, 1025, 3000, 100_000, 1.5, True, "2"])
def test_router_threads_are_bounded(saved, threads):
    with pytest.raises(InvalidParameterError, match=r"'threads' parameter of Router.load must be an integer in "
                                                    r"\[1, 1024\]"):
        Router.load(saved[0], threads=threads)


def test_router_load_accepts_the_bounds_of_threads_and_uses_at_most_one_per_core(saved, table):
    tasks = lambda: len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0  # noqa: E731
    for threads in (1, 1024, None):
        before = tasks()
        router = Router.load(saved[0], threads=threads)
        assert len(router.route(table[1].iloc[:20], budget=0.5)) == 20
        assert tasks() - before <= 3 * (os.cpu_count() or 1)  # three graphs, one pool each
        del router


def test_a_duplicate_column_name_is_an_input_error_naming_it(saved, inspector, table):
    router = Router.load(saved[0])
    test = table[1].iloc[:30]
    twice = pd.concat([test, test[["basic_2"]]], axis=1)
    assert list(twice.columns).count("basic_2") == 2
    for call in (lambda: router.route(twice), lambda: router.final_score(twice),
                 lambda: Router.from_inspector(inspector).route(twice),
                 lambda: ActiveInspector(inspector.roles, n_members=1).fit(pd.concat([table[0], table[0][["fault"]]],
                                                                                     axis=1))):
        with pytest.raises(InputError, match=r"column\(s\) \['(basic_2|fault)'\] appear more than once"):
            call()
    # a duplicated column the model does not use is harmless
    extra = pd.concat([test, test[["basic_2"]].set_axis(["unused"], axis=1),
                       test[["basic_2"]].set_axis(["unused"], axis=1)], axis=1)
    pd.testing.assert_frame_equal(router.route(extra, budget=0.3), router.route(test, budget=0.3))


@pytest.mark.parametrize("estimator", [
    lambda roles: ActiveInspector(roles, n_members=100_000_000),
    lambda roles: ActiveInspector(roles, n_members=101),
    lambda roles: NetClassifier(n_members=101),
    lambda roles: NetRegressor(n_members=10**8),
])
def test_members_are_bounded_in_the_api_before_any_work(estimator, dev, table):
    model = estimator(table[2])
    start = time.perf_counter()
    with pytest.raises(InvalidParameterError, match=r"'n_members' parameter .* must be an integer in \[1, 100\]"):
        if isinstance(model, ActiveInspector):
            model.fit(dev)
        else:
            model.fit(np.zeros((10, 2)), np.arange(10) % 2)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("argv, message", [
    (["route", "--threads", "3000"], "--threads: '3000' must be an integer in [1, 1024]"),
    (["route", "--threads", "100000"], "--threads"), (["train", "--threads", "1025"], "--threads"),
    (["evaluate", "--threads", "5000"], "--threads"), (["simulate", "--threads", "2000"], "--threads"),
    (["train", "--members", "100000000"], "--members: '100000000' must be an integer in [1, 100]"),
    (["train", "--members", "101"], "--members"), (["evaluate", "--members", "1000"], "--members"),
])
def test_threads_and_members_are_bounded_at_parse_time(argv, message, saved, tmp_path, capsys):
    extra = ["--model", str(saved[0]), "--data", str(tmp_path / "none.csv")] if argv[0] == "route" else []
    start = time.perf_counter()
    code, _, err = run(capsys, *argv, *extra, "--out", str(tmp_path / "x.csv"))
    assert code == 2 and message in err and "Traceback" not in err and time.perf_counter() - start < 5
    assert list(tmp_path.iterdir()) == []


def test_the_bounds_themselves_are_accepted(tmp_path, capsys):
    code, _, _ = run(capsys, "simulate", "--n-products", "50", "--threads", "1024", "--out", str(tmp_path / "s.csv"))
    assert code == 0 and len(read_table(tmp_path / "s.csv")) == 50


@pytest.mark.parametrize("name", ["so.txt", "so", "so.json", "so.csv.txt", "so.gz"])
def test_unknown_table_suffixes_are_refused_before_work(name, saved, table, tmp_path, capsys):
    code, _, err = run(capsys, "simulate", "--out", str(tmp_path / name))
    assert code == 2 and f"{name}: use a .csv, .csv.gz or .parquet file name" in err and "Traceback" not in err
    data = tmp_path / "t.csv"
    table[1].to_csv(data, index=False)
    code, _, err = run(capsys, "route", "--model", str(saved[0]), "--data", str(data), "--out", str(tmp_path / name))
    assert code == 2 and "use a .csv, .csv.gz or .parquet file name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


@pytest.mark.parametrize("name", ["s.csv", "s.CSV", "s.csv.gz", "s.parquet", "s.pq"])
def test_known_table_suffixes_are_written_in_their_format(name, saved, tmp_path, capsys):
    path = tmp_path / name
    code, out, _ = run(capsys, "simulate", "--n-products", "200", "--seed", "4", "--out", str(path))
    assert code == 0 and json.loads(out)["out"] == str(path)
    magic = {"s.csv.gz": b"\x1f\x8b", "s.parquet": b"PAR1", "s.pq": b"PAR1"}.get(name, b"basic_0,")
    assert path.read_bytes().startswith(magic)
    frame = read_table(path)
    assert len(frame) == 200 and "fault" in frame.columns
    routed = tmp_path / f"r_{name}"
    code, _, _ = run(capsys, "route", "--model", str(saved[0]), "--data", str(path), "--budget", "0.25",
                     "--out", str(routed))
    result = read_table(routed)
    assert code == 0 and list(result.columns) == ["row", "decision", "fault_score", "routing_score", "final_score"]
    assert (result["decision"] == "inspect").sum() == 50 and result["row"].tolist() == list(range(200))


def copy_model(saved, tmp_path, name="model"):
    return shutil.copytree(saved[0], tmp_path / name)


def test_ctrl_c_before_the_commit_point_keeps_the_old_model(saved, inspector, table, tmp_path, monkeypatch):
    """A real SIGINT delivered while the new folder is still being written (first graph): the save stops with
    KeyboardInterrupt, no temporary folder is left, and the old model loads and routes as before."""
    folder = copy_model(saved, tmp_path)
    before = (folder / "manifest.json").read_bytes()
    real = export._write_graph

    def write_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(export, "_write_graph", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export.save(inspector, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (folder / "manifest.json").read_bytes() == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    Router.load(folder)


def test_ctrl_c_during_the_swap_is_dropped_and_the_new_model_is_whole(saved, inspector, table, tmp_path, monkeypatch):
    """A real SIGINT delivered between the two renames of the swap: the swap completes (the new model was
    whole), no KeyboardInterrupt escapes, and Ctrl-C raises KeyboardInterrupt again afterwards."""
    folder = copy_model(saved, tmp_path)
    old_model = json.loads((folder / "manifest.json").read_text())["model"]
    fired = []
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def interrupting(src, dst, *args, real=real, **kwargs):
            if not fired and os.path.realpath(src) == os.path.realpath(folder):  # the old folder moved aside: the swap has begun
                fired.append(src)
                os.kill(os.getpid(), signal.SIGINT)
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, interrupting)
    manifest = export.save(inspector, folder)
    monkeypatch.undo()
    assert fired and manifest["model"] != old_model
    assert json.loads((folder / "manifest.json").read_text())["model"] == manifest["model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    Router.load(folder)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
