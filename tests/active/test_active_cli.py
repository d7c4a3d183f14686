import json

import pandas as pd
import pytest

from fabguard.cli import main


def run(capsys, *argv):
    code = main(["active", *argv])
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
    assert max(report["onnx_max_abs_diff"].values()) < 1e-5
    assert {p.name for p in model.iterdir()} == {"inspector.pkl", "manifest.json", "student.onnx", "teacher.onnx",
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


def test_every_command_takes_a_seed(capsys):
    for command in ("train", "evaluate", "route", "simulate"):
        with pytest.raises(SystemExit):
            main(["active", command, "--help"])
        assert "--seed" in capsys.readouterr().out
