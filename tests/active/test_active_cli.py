import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fabguard.active.router import Router
from fabguard.cli import main


def run(capsys, *argv):
    """Exit code, stdout and stderr of ``fabguard active ARGV`` run in-process (argparse exits itself)."""
    try:
        code = main(["active", *argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_simulate_train_route_from_the_command_line(tmp_path, capsys):
    table, model, routed = tmp_path / "sim.csv", tmp_path / "model", tmp_path / "routed.csv"
    code, out, _ = run(capsys, "simulate", "--n-products", "1200", "--fault-rate", "0.1", "--sample-rate", "0.5",
                       "--seed", "3", "--out", str(table))
    assert code == 0 and json.loads(out)["roles"]["label"] == "fault"
    basic = ",".join(f"basic_{i}" for i in range(6))
    advanced = ",".join(f"advanced_{i}" for i in range(4))
    code, out, _ = run(capsys, "train", "--data", str(table), "--label", "fault", "--basic", basic, "--advanced",
                       advanced, "--members", "1", "--seed", "3", "--out", str(model))
    assert code == 0
    report = json.loads(out)
    for name, diff in report["onnx_max_abs_diff"].items():  # each graph within its argued float32 bound
        assert diff <= report["float32_bound"][name]
    assert {p.name for p in model.iterdir()} == {"arrays.npz", "manifest.json", "student.onnx", "teacher.onnx",
                                                 "router.onnx"}
    code, out, _ = run(capsys, "route", "--model", str(model), "--data", str(table), "--budget", "0.3",
                       "--seed", "3", "--out", str(routed))
    result = pd.read_csv(routed)
    assert code == 0 and list(result.columns) == ["row", "decision", "fault_score", "routing_score", "final_score"]
    assert (result["decision"] == "inspect").sum() == 360


def test_bad_input_exits_2_with_a_clear_message_and_no_output_file(tmp_path, capsys):
    table = tmp_path / "t.csv"
    pd.DataFrame({"a": [1, 2, 3, 4], "b": [1.0, None, 2, None], "y": [0, 1, 0, 1]}).to_csv(table, index=False)
    out = tmp_path / "model"
    code, _, err = run(capsys, "train", "--data", str(table), "--label", "y", "--basic", "a,speed", "--advanced",
                       "b", "--out", str(out))
    assert code == 2 and "t.csv: unknown column(s) ['speed']" in err and not out.exists()
    code, _, err = run(capsys, "evaluate", "--dataset", "simulate", "--regime", "stormy", "--out", str(out))
    assert code == 2 and "unknown simulator regime 'stormy'" in err
    routed = tmp_path / "routed.csv"
    code, _, err = run(capsys, "route", "--model", str(tmp_path), "--data", str(table), "--out", str(routed))
    assert code == 2 and "no manifest.json" in err and not routed.exists()
    frame = pd.read_csv(table).assign(b=float("nan"))
    frame.to_csv(table, index=False)
    code, _, err = run(capsys, "train", "--data", str(table), "--label", "y", "--basic", "a", "--advanced", "b",
                       "--out", str(out))
    assert code == 2 and "t.csv: no product has advanced results" in err


def test_seed_reproduces_and_changes_results(saved, tmp_path, capsys):
    tables = {}
    for name, seed in (("a", "4"), ("b", "4"), ("c", "5")):
        tables[name] = tmp_path / f"{name}.csv"
        assert run(capsys, "simulate", "--n-products", "300", "--seed", seed, "--out", str(tables[name]))[0] == 0
    assert tables["a"].read_bytes() == tables["b"].read_bytes() != tables["c"].read_bytes()
    routes = {}
    for name, seed in (("a", "4"), ("b", "4"), ("c", "5")):
        routes[name] = tmp_path / f"route_{name}.csv"
        code, _, _ = run(capsys, "route", "--model", str(saved[0]), "--data", str(tables["a"]), "--rule", "random",
                         "--budget", "0.3", "--seed", seed, "--out", str(routes[name]))
        assert code == 0
    decisions = {k: pd.read_csv(v)["decision"] for k, v in routes.items()}
    assert decisions["a"].equals(decisions["b"]) and not decisions["a"].equals(decisions["c"])


@pytest.mark.parametrize("argv, message", [
    (["train", "--members", "0"], "--members: '0' must be an integer in [1, inf)"),
    (["train", "--threads", "0"], "--threads"), (["train", "--sample-rate", "1.5"], "--sample-rate"),
    (["train", "--lambda", "nan"], "--lambda"), (["train", "--seed", "-1"], "--seed"),
    (["train", "--seed", "1e23"], "--seed"), (["train", "--rule", "best"], "invalid choice: 'best'"),
    (["evaluate", "--seeds", "0"], "--seeds"), (["evaluate", "--test-fraction", "0"], "--test-fraction"),
    (["evaluate", "--test-fraction", "1"], "--test-fraction"), (["evaluate", "--fpr", "nan"], "--fpr"),
    (["evaluate", "--fpr", "2"], "--fpr"), (["evaluate", "--fpr", "0"], "--fpr"),
    (["route", "--budget", "abc"], "--budget"), (["route", "--money", "nan"], "--money"),
    (["simulate", "--n-products", "1e10"], "--n-products"), (["simulate", "--fault-rate", "1"], "--fault-rate"),
])
def test_bad_numbers_are_refused_at_parse_time(argv, message, tmp_path, capsys):
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "x"))
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_checked_before_any_work(saved, table, tmp_path, capsys, monkeypatch):
    data = tmp_path / "base.csv"
    table[1].to_csv(data, index=False)
    before = data.read_bytes()
    code, _, err = run(capsys, "route", "--model", str(saved[0]), "--data", str(data), "--out", str(data))
    assert code == 2 and "is the input file" in err and data.read_bytes() == before
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: let the folder look read-only to the check
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    try:
        for argv in (["train", "--dataset", "simulate"], ["evaluate", "--dataset", "simulate"],
                     ["route", "--model", str(saved[0]), "--data", str(data)], ["simulate"]):
            start = time.perf_counter()
            code, _, err = run(capsys, *argv, "--out", str(locked / "out"))
            assert code == 2 and "no permission to write" in err and time.perf_counter() - start < 5
    finally:
        locked.chmod(0o700)


def test_interrupted_train_leaves_the_old_model_whole(saved, table, tmp_path):
    """A real SIGINT a moment into training with --out an existing model folder: exit 130, no traceback,
    and the old folder loads and routes exactly as before."""
    model = shutil.copytree(saved[0], tmp_path / "model")
    data = tmp_path / "table.csv"
    table[0].to_csv(data, index=False)
    before = Router.load(model, seed=1).route(table[1], budget=0.3)
    roles = table[2]
    proc = subprocess.Popen([sys.executable, "-m", "fabguard", "active", "train", "--data", str(data), "--label",
                             roles.label, "--basic", ",".join(roles.basic), "--advanced", ",".join(roles.advanced),
                             "--members", "3", "--out", str(model)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    err = ""
    while "train:" not in err:  # the progress bar appears once training has started
        line = proc.stderr.read(1)
        assert line, f"train ended before it could be interrupted: {err}"
        err += line
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err += rest
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "table.csv"]  # no temporary folder left
    pd.testing.assert_frame_equal(Router.load(model, seed=1).route(table[1], budget=0.3), before)


def test_train_never_replaces_a_folder_holding_other_files(tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    start = time.perf_counter()
    code, _, err = run(capsys, "train", "--dataset", "simulate", "--out", str(folder))
    assert code == 2 and "holds 'notes.txt'" in err and time.perf_counter() - start < 5
    assert (folder / "notes.txt").read_text() == "mine"


def test_route_refuses_a_crafted_pickle_without_running_it(saved, table, tmp_path, capsys):
    import pickle

    folder = shutil.copytree(saved[0], tmp_path / "model")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "inspector.pkl").write_bytes(pickle.dumps(Payload()))
    data = tmp_path / "t.csv"
    table[1].to_csv(data, index=False)
    code, _, err = run(capsys, "route", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "r.csv"))
    assert code == 2 and "never loads pickles" in err and not marker.exists() and not (tmp_path / "r.csv").exists()
