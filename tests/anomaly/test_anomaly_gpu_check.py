"""bench/gpu/check.sh, checked on the CPU: its dry run prints every step, each fabguard command parses with
the real CLI, every output lands under one results folder; and its parity script runs (CPU provider)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from fabguard.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "check.sh"


def _dry_run(wheels: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "WORK": str(tmp_path / "work"), "PYTHON": "python3"}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", str(wheels)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in ("onnxruntime_gpu-1.23.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "tensorrt_cu12-10.13.0.35-py2.py3-none-manylinux_2_28_x86_64.whl"):
        (folder / name).write_bytes(b"")
    return folder


def test_dry_run_prints_every_step_with_outputs_under_one_folder(wheels, tmp_path):
    done = _dry_run(wheels, tmp_path)
    assert done.returncode == 0, done.stderr
    commands = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    results, work = str(tmp_path / "results"), str(tmp_path / "work")
    assert not Path(results).exists() and not Path(work).exists()  # a dry run writes nothing
    steps = ["nvidia-smi", "pip install --no-index --find-links", "get_available_providers",
             "pytest -q -rs tests/anomaly/test_anomaly_gpu.py", "gpu_tests.xml", "anomaly synthetic",
             "--model pca", "--model vae", "--model patchcore", "export --model", "bench/gpu/parity.py",
             "benchmark --artifact"]
    found = [next(i for i, c in enumerate(commands) if step in c) for step in steps]
    assert found == sorted(found), commands  # in this order
    assert f"--find-links '{wheels}'" in commands[1] and "onnxruntime-gpu" in commands[1] and "tensorrt" in commands[1]
    assert "pip uninstall -y onnxruntime" in commands[1]  # the CPU build would shadow the GPU one
    parity = next(c for c in commands if "parity.py" in c)
    assert "--providers cuda tensorrt tensorrt-fp16" in parity and f"--out {results}" in parity
    benchmarks = [c for c in commands if "anomaly benchmark" in c]
    assert [shlex.split(c.split(" > ")[0])[4] for c in benchmarks] == [f"{work}/{m}.onnx" for m in ("pca", "vae", "patchcore")]
    for command in commands:  # every file a step writes is under the results folder (or the work folder)
        if " > " in command:
            assert command.split(" > ")[1].startswith(results + "/"), command
        words = shlex.split(command.split(" > ")[0])
        for flag in ("--json", "--junitxml"):
            if flag in words:
                assert words[words.index(flag) + 1].startswith(results + "/"), command
    parser_commands = [shlex.split(c.split(" > ")[0])[1:] for c in commands if c.startswith("fabguard ")]
    assert len(parser_commands) == 3 + 3 + 3 + 1  # train x3, export x3, benchmark x3, synthetic
    for argv in parser_commands:  # the flags exist and their values parse
        build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("remove, message", [("all", "no such folder"), ("onnxruntime_gpu", "no onnxruntime_gpu"),
                                             ("tensorrt", "no tensorrt wheel")])
def test_missing_wheels_are_refused_before_anything_runs(wheels, tmp_path, remove, message):
    target = tmp_path / "none" if remove == "all" else wheels
    for file in wheels.iterdir():
        if file.name.startswith(remove):
            file.unlink()
    done = _dry_run(target, tmp_path)
    assert done.returncode == 2 and message in done.stderr and not done.stdout


def test_parity_script_runs_on_the_cpu_provider(normals, synthetic_root, tmp_path):
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector

    detector = PCADetector(n_components=4, input_size=64).fit(normals.images)
    detector.save(tmp_path / "pca.pt")
    export_onnx(detector, tmp_path / "pca.onnx")
    spec = importlib.util.spec_from_file_location("gpu_parity", REPO / "bench" / "gpu" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.parity(tmp_path / "pca.pt", synthetic_root, ["cpu"], tmp_path / "cache")
    (row,) = report["rows"]
    assert report["model"] == "pca" and row["provider"] == "cpu" and row["n_images"] == 16
    # the export's own parity check runs the same CPU graph on the same batch: the same differences, exactly
    from fabguard.anomaly.export import parity
    from fabguard.anomaly.images import load_dataset

    expected = parity(detector, tmp_path / "pca.onnx", load_dataset(synthetic_root, 64, "test").images)
    assert row["max_abs_diff_score"] == expected["max_abs_diff_score"]
    assert row["max_abs_diff_heatmap"] == expected["max_abs_diff_heatmap"]
