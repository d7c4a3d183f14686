import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
    (tmp_path / "not_a_model").mkdir()
    code, _, err = run(capsys, "route", "--model", str(tmp_path / "not_a_model"), "--data", str(table), "--out",
                       str(routed))
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
    (["train", "--members", "0"], "--members: '0' must be an integer in [1, 100]"),
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
        for argv, name in ((["train", "--dataset", "simulate"], "out"), (["evaluate", "--dataset", "simulate"], "out"),
                           (["route", "--model", str(saved[0]), "--data", str(data)], "out.csv"),
                           (["simulate"], "out.csv")):
            start = time.perf_counter()
            code, _, err = run(capsys, *argv, "--out", str(locked / name))
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
    time.sleep(0.1)  # a moment in: training of 3 members on this small table can end within a second
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err += rest
    # 130 with our message, or ended by the signal itself when it lands as the interpreter shuts down (a
    # shell reports 130 for both); never a traceback, and the old model must be whole either way
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err, (proc.returncode, err)
    assert proc.returncode == -signal.SIGINT or "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "table.csv"]  # no temporary folder left
    pd.testing.assert_frame_equal(Router.load(model, seed=1).route(table[1], budget=0.3), before)


def _interrupt_train(folder, data, roles, phase):
    """Run ``fabguard active train --out folder/model`` as the console script does (``fabguard.cli.main``),
    in its own process group and started with SIGINT ignored (as a job started in the background by a
    shell inherits it), send SIGINT to the whole group once ``phase`` is reached, and return
    (exit code, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from fabguard.cli import main; sys.exit(main())",
                             "active", "train", "--data", str(data), "--label", roles.label, "--basic",
                             ",".join(roles.basic), "--advanced", ",".join(roles.advanced), "--members", "1",
                             "--threads", "1", "--out", str(folder / "model")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    reached = {"fit": lambda: "train:" in "".join(err),
               "teacher": lambda: "teacher done" in "".join(err),
               "save": lambda: any(tmp.is_dir() and any(tmp.glob("*.onnx")) for tmp in folder.glob(".model.*"))}
    while not reached[phase]():
        assert proc.poll() is None, f"train ended before {phase}: {''.join(err)}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.perf_counter()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.perf_counter() - start
    reader.join(timeout=10)
    return proc.returncode, "".join(err), seconds


def test_sigint_to_the_process_group_stops_train_at_any_phase(saved, table, tmp_path):
    """The hostile-input report: a real SIGINT to the process group of a train started with SIGINT
    ignored (a background job) was ignored, and the new model replaced the old one. At each phase (fitting,
    after the teacher, while the new folder's graphs are written) train must exit promptly with 130 and one
    line, leave no temporary folder, and keep the existing model byte for byte."""
    data = tmp_path / "table.csv"
    table[0].iloc[:800].to_csv(data, index=False)
    phases = ("fit", "teacher", "save")
    folders = {phase: tmp_path / phase for phase in phases}
    before = {}
    for phase, folder in folders.items():
        shutil.copytree(saved[0], folder / "model")
        before[phase] = {p.name: p.read_bytes() for p in (folder / "model").iterdir()}
    with ThreadPoolExecutor(len(phases)) as pool:
        results = dict(zip(phases, pool.map(lambda ph: _interrupt_train(folders[ph], data, table[2], ph), phases)))
    for phase, (code, err, seconds) in results.items():
        assert code == 130 and "Traceback" not in err and err.rstrip().endswith("fabguard: interrupted"), (phase, err)
        assert seconds < 30, (phase, seconds)
        assert [p.name for p in folders[phase].iterdir()] == ["model"], phase  # no temporary folder left
        assert {p.name: p.read_bytes() for p in (folders[phase] / "model").iterdir()} == before[phase], phase
    Router.load(folders["save"] / "model")


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
