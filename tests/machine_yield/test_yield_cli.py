"""``fabguard yield ...`` end to end, in process (plus one check of the installed entry point)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from fabguard.cli import main


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out, truth = folder / "records.csv", folder / "truth.parquet"
    assert main(["yield", "simulate", str(out), "--machines", "30", "--batches", "300", "--low", "2",
                 "--seed", "4", "--truth", str(truth)]) == 0
    return out, truth


def test_simulate_writes_records_and_truth(records):
    out, truth = records
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["batch", "step", "machine", "pieces_in", "defects", "inspected"]
    assert frame["batch"].nunique() == 300
    assert pd.read_parquet(truth)["low_yield"].sum() == 2


def test_detect_prints_and_writes_every_output(records, tmp_path, capsys):
    out, truth = records
    low = pd.read_parquet(truth).query("low_yield")["machine"].tolist()
    j, c, p = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    code = main(["yield", "detect", str(out), "--resamples", "6", "--bootstrap", "500", "--seed", "1",
                 "--threads", "2", "--json", str(j), "--csv", str(c), "--plot", str(p), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "low-yield: " in printed and all(m in printed for m in low)
    report = json.loads(j.read_text())
    assert sorted(report["low_yield"]) == sorted(low)
    assert report["summary"]["interval"] == "information" and report["summary"]["em_iterations_resamples_median"] is None
    assert len(pd.read_csv(c)) == 30
    assert p.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method", ["glm", "commonality"])
def test_baseline_methods(records, capsys, method):
    out, _ = records
    assert main(["yield", "detect", str(out), "--method", method]) == 0
    assert capsys.readouterr().out.startswith(method)


def test_bad_input_exits_2_with_where_and_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("batch,step,machine,pieces_in,defects\nB1,1,M1,10,0\nB1,2,M2,10,11\n")
    j = tmp_path / "out.json"
    assert main(["yield", "detect", str(bad), "--json", str(j)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "row 2" in err and "'B1'" in err and "defects" in err
    assert not j.exists()


def test_bad_plot_name_writes_nothing(records, tmp_path, capsys):
    out, _ = records
    plot = tmp_path / "plot.bmp"
    assert main(["yield", "detect", str(out), "--method", "glm", "--plot", str(plot)]) == 2
    assert "--plot" in capsys.readouterr().err and not plot.exists()


def test_bootstrap_interval_shows_progress_and_reports_its_resamples(records, tmp_path, capsys):
    out, _ = records
    j = tmp_path / "r.json"
    assert main(["yield", "detect", str(out), "--interval", "bootstrap", "--resamples", "5", "--json", str(j)]) == 0
    assert "EM fits" in capsys.readouterr().err  # the bar: 1 + 5 fits
    summary = json.loads(j.read_text())["summary"]
    assert summary["interval"] == "bootstrap" and summary["em_converged_resamples"] == 5


def test_bundled_demo_is_the_default(capsys):
    assert main(["yield", "detect", "--resamples", "4", "--bootstrap", "300", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bundled demo" in printed and "low-yield: M" in printed


def test_sizing(tmp_path, capsys):
    j = tmp_path / "sizing.json"
    assert main(["yield", "sizing", "--machines", "20", "--low", "1", "--reps", "3", "--resamples", "4",
                 "--max-batches", "160", "--seed", "2", "--json", str(j), "--quiet"]) == 0
    result = json.loads(j.read_text())
    tried = {row["batches"]: row["recall"] for row in result["tried"]}
    assert result["batches"] is not None
    assert tried[result["batches"]] >= 0.95
    assert all(r < 0.95 for n, r in tried.items() if n < result["batches"])
    assert "batches" in capsys.readouterr().out


def test_entry_point():
    run = subprocess.run([sys.executable, "-m", "fabguard", "yield", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "detect" in run.stdout and "sizing" in run.stdout


def test_detect_modes_and_the_authors_format(records, tmp_path, capsys):
    from test_yield_data import to_authors

    out, truth = records
    low = sorted(pd.read_parquet(truth).query("low_yield")["machine"])
    wide = tmp_path / "authors.csv"
    to_authors(pd.read_csv(out)).to_csv(wide, index=False)
    j = tmp_path / "paper.json"
    assert main(["yield", "detect", str(wide), "--interval", "paper", "--rule", "paper", "--resamples", "4",
                 "--bootstrap", "200", "--threads", "1", "--json", str(j), "--quiet"]) == 0
    report = json.loads(j.read_text())
    assert sorted(report["low_yield"]) == low
    assert report["summary"]["interval"] == "paper" and report["summary"]["rule"] == "paper"
    assert main(["yield", "detect", str(wide), "--format", "authors", "--in-progress", "exclude", "--resamples", "3",
                 "--margin", "0.01", "--min-batches", "3", "--no-accelerate", "--max-iter", "400", "--threads", "1",
                 "--json", str(j), "--quiet"]) == 0
    report = json.loads(j.read_text())
    assert sorted(report["low_yield"]) == low and report["summary"]["margin"] == 0.01
    capsys.readouterr()
    assert main(["yield", "detect", str(wide), "--format", "long", "--quiet"]) == 2
    assert "missing column" in capsys.readouterr().err
