"""``fabguard anomaly benchmark``: rows per provider and batch, memory per process, refusals before work."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from fabguard.anomaly.benchmark import benchmark, check_providers, parse_batches, table, time_batches
from fabguard.cli import main
from fabguard.errors import InputError


@pytest.fixture(scope="module")
def artifacts(normals, tmp_path_factory) -> dict:
    """A small PCA model (the shared fixture fits every detector: slower)."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector

    path = tmp_path_factory.mktemp("bench_onnx") / "pca.onnx"
    return {"pca": export_onnx(PCADetector(n_components=8, input_size=64).fit(normals.images), path)}


def test_time_batches_summarises_the_timed_runs(monkeypatch):
    """Timings fed by a fake clock: each run of batch b takes b * 10 ms, the warm-up 1 s."""
    clock, calls = [0.0], []

    def run(x):
        calls.append(x.shape)
        clock[0] += 1.0 if len(calls) == 1 else 0.01 * len(x)

    monkeypatch.setattr("fabguard.anomaly.benchmark.time.perf_counter", lambda: clock[0])
    rows = time_batches(run, 8, [1, 4], runs=5, warmup=1, seed=0)
    assert calls == [(1, 3, 8, 8)] * 6 + [(4, 3, 8, 8)] * 6
    assert [r["batch"] for r in rows] == [1, 4] and rows[0]["warmup_s"] == 1.0
    for row in rows:  # every timed run of a batch takes 10 ms per image: all statistics agree
        for key in ("mean_ms_per_image", "median_ms_per_image", "p99_ms_per_image"):
            assert row[key] == pytest.approx(10.0, rel=1e-9)  # sums of a few float64 times, far below 1e-9
        assert row["images_per_s"] == pytest.approx(100.0, rel=1e-9)


def test_benchmark_on_the_cpu(artifacts, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["anomaly", "benchmark", "--artifact", str(artifacts["pca"]), "--provider", "cpu", "--batch", "1,4",
                 "--runs", "3", "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "pca" and report["input_size"] == 64
    assert report["model_mb"] == pytest.approx(artifacts["pca"].stat().st_size / 1e6)
    (result,) = report["results"]
    assert result["provider"] == "cpu" and result["onnxruntime_providers"][0] == "CPUExecutionProvider"
    assert [r["batch"] for r in result["rows"]] == [1, 4] and all(r["runs"] == 3 for r in result["rows"])
    for row in result["rows"]:
        assert 0 < row["mean_ms_per_image"] and row["median_ms_per_image"] <= row["p99_ms_per_image"]
        # images/s = batch / mean batch time = 1000 / mean per-image time
        assert row["images_per_s"] == pytest.approx(1000 / row["mean_ms_per_image"], rel=1e-9)
    # a fresh process holds at least the runtime and the model
    assert result["peak_rss_mb"] >= result["rss_after_session_mb"] > report["model_mb"]
    assert result["gpu_memory_mb"] is None or result["gpu_memory_mb"] >= 0
    printed = capsys.readouterr().out
    assert "| cpu | 4 |" in printed and table(report) in printed


def test_providers_and_batches_are_checked_before_work(artifacts, tmp_path):
    assert check_providers(None) == [n for n, p in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
                                                    ("tensorrt", "TensorrtExecutionProvider"),
                                                    ("tensorrt-fp16", "TensorrtExecutionProvider"))
                                     if p in ort.get_available_providers()]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(InputError, match="provider 'cuda' needs CUDAExecutionProvider.*fabguard\\[gpu\\]"):
            check_providers(["cuda"])
    with pytest.raises(InputError, match="provider 'npu'"):
        check_providers(["npu"])
    assert parse_batches("1,8,32") == [1, 8, 32]
    for bad in ("1,x", "0,4", "4,4", ""):
        with pytest.raises(InputError, match="batch sizes"):
            parse_batches(bad)
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not an ONNX model"):
        benchmark(tmp_path / "x.onnx", ["cpu"], [1], runs=1, warmup=1)
    with pytest.raises(InputError, match="'runs' parameter"):
        benchmark(artifacts["pca"], ["cpu"], [1], runs=0, warmup=1)


def test_benchmark_command_refuses_a_missing_provider(artifacts, capsys):
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is installed here: nothing to refuse")
    assert main(["anomaly", "benchmark", "--artifact", str(artifacts["pca"]), "--provider", "tensorrt-fp16"]) == 2
    assert "needs TensorrtExecutionProvider" in capsys.readouterr().err


def test_random_inputs_follow_the_seed():
    seen = []
    for seed in (3, 3, 4):
        rows = []
        time_batches(lambda x: rows.append(x.copy()), 4, [2], runs=1, warmup=1, seed=seed)
        seen.append(rows[0])
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])
