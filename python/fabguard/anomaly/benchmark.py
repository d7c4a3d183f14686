"""Latency, throughput, model size and peak memory of an exported artifact on this machine's providers.

Per provider and batch size: ``warmup`` untimed runs (the first one also builds a TensorRT engine,
timed apart as ``first_run_s``), then ``runs`` timed runs of one batch of seeded random images
(latency does not depend on image content); per-image latency = batch time / batch size, summarised
as mean, P50 and P99; throughput = batch size / mean batch time. Each provider is measured in a fresh
process so that its peak memory is its own: ``peak_rss_mb`` is the process's maximum resident set
(``getrusage`` ``ru_maxrss``: runtime libraries, session and the largest batch's buffers), with
``rss_after_session_mb`` the same maximum right after the session opened; on a GPU, ``gpu_memory_mb``
is what ``nvidia-smi`` reports the process holding after the last batch (None without nvidia-smi).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fabguard.errors import InputError
from fabguard.params import POSITIVE_INT, check, check_memory, check_seed

# provider name -> (ONNX Runtime providers, best first; TensorRT FP16)
PROVIDERS = {"cpu": (["CPUExecutionProvider"], False), "cuda": (["CUDAExecutionProvider"], False),
             "tensorrt": (["TensorrtExecutionProvider", "CUDAExecutionProvider"], False),
             "tensorrt-fp16": (["TensorrtExecutionProvider", "CUDAExecutionProvider"], True)}
MEMORY_NOTE = ("peak_rss_mb: the measuring process's maximum resident set (getrusage ru_maxrss), one fresh process "
               "per provider; gpu_memory_mb: nvidia-smi's used_memory of that process after the last batch")


def available_providers() -> list[str]:
    """The provider names of :data:`PROVIDERS` this onnxruntime build has."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [name for name, (ort_names, _) in PROVIDERS.items() if ort_names[0] in have]


def check_providers(names: Sequence[str] | None) -> list[str]:
    """The providers to measure (default: every available one); an unknown or missing one is refused."""
    import onnxruntime as ort

    if not names:
        return available_providers()
    for name in names:
        if name not in PROVIDERS:
            raise InputError(f"provider {name!r}: expected one of {', '.join(PROVIDERS)}")
        needed = PROVIDERS[name][0][0]
        if needed not in ort.get_available_providers():
            raise InputError(f"provider {name!r} needs {needed}, which this onnxruntime {ort.__version__} does not "
                             f"have (it has {', '.join(ort.get_available_providers())}); for CUDA and TensorRT "
                             "install 'fabguard[gpu]' (onnxruntime-gpu, tensorrt) on a machine with an NVIDIA GPU")
    return list(dict.fromkeys(names))


def parse_batches(text: str) -> list[int]:
    """``"1,8,32,64"`` -> [1, 8, 32, 64] (positive integers, no repeats)."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        raise InputError(f"batch sizes {text!r}: expected positive integers separated by commas, e.g. 1,8,32,64") from None
    if not batches or min(batches) < 1 or len(set(batches)) != len(batches):
        raise InputError(f"batch sizes {text!r}: expected distinct positive integers, e.g. 1,8,32,64")
    return batches


def rss_mb() -> float:
    """Maximum resident set of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_memory_mb() -> float | None:
    """GPU memory nvidia-smi reports this process holding, MB; None without nvidia-smi or a GPU context."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    used = [float(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line)
            if p.strip().isdigit() and int(p) == os.getpid()]
    return sum(used) if used else None


def time_batches(run: Callable[[np.ndarray], object], size: int, batches: Sequence[int], runs: int, warmup: int,
                 seed: int) -> list[dict]:
    """Time ``run`` on seeded random (batch, 3, size, size) inputs; one row per batch size."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batches:
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        start = time.perf_counter()
        for _ in range(warmup):
            run(x)
        first = time.perf_counter() - start
        times = np.empty(runs)
        for i in range(runs):
            start = time.perf_counter()
            run(x)
            times[i] = time.perf_counter() - start
        per_image = times * 1000 / batch
        rows.append({"batch": batch, "runs": runs, "warmup_s": first, "mean_ms_per_image": float(per_image.mean()),
                     "median_ms_per_image": float(np.median(per_image)),
                     "p99_ms_per_image": float(np.percentile(per_image, 99)),
                     "images_per_s": float(batch / times.mean()), "peak_rss_mb_so_far": rss_mb()})
    return rows


def measure(artifact: str, provider: str, batches: Sequence[int], runs: int, warmup: int, seed: int,
            threads: int | None = None, cache_dir: str | None = None) -> dict:
    """One provider in this process (:func:`benchmark` calls it in a fresh one)."""
    from fabguard.anomaly.runtime import Inspector

    ort_names, fp16 = PROVIDERS[provider]
    start = time.perf_counter()
    inspector = Inspector(artifact, providers=ort_names, max_batch=max(batches), fp16=fp16, threads=threads,
                          cache_dir=cache_dir)
    session_s = time.perf_counter() - start
    if inspector.providers[0] != ort_names[0]:  # ONNX Runtime falls back to the CPU when a GPU library is missing
        raise InputError(f"provider {provider!r}: ONNX Runtime could not start {ort_names[0]} here and fell back to "
                         f"{inspector.providers[0]} (check the CUDA / TensorRT libraries and the GPU driver)")
    after_session = rss_mb()
    name = inspector.session.get_inputs()[0].name
    rows = time_batches(lambda x: inspector.session.run(None, {name: x}), inspector.input_size, batches, runs,
                        warmup, seed)
    return {"provider": provider, "onnxruntime_providers": inspector.providers, "fp16": fp16,
            "session_s": session_s, "rss_after_session_mb": after_session, "peak_rss_mb": rss_mb(),
            "gpu_memory_mb": gpu_memory_mb(), "rows": rows}


def machine() -> str:
    import onnxruntime as ort

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, onnxruntime {ort.__version__}"


def benchmark(artifact: str | os.PathLike, providers: Sequence[str] | None = None, batches: Sequence[int] = (1, 8, 32, 64),
              runs: int = 100, warmup: int = 3, seed: int = 0, threads: int | None = None,
              cache_dir: str | os.PathLike | None = None) -> dict:
    """Measure ``artifact`` on each provider (default: every available one); JSON-ready results."""
    from fabguard.anomaly.runtime import Inspector

    metadata = Inspector.read(artifact)  # a foreign or damaged file is refused before any process starts
    providers = check_providers(providers)
    for name, value, form in (("runs", runs, POSITIVE_INT), ("warmup", warmup, POSITIVE_INT)):
        check(name, value, form, owner="benchmark")
    seed = check_seed(seed, owner="benchmark")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise InputError(f"batch sizes must be positive integers, got {list(batches)}")
    size = metadata["input_size"]
    check_memory(2 * 4.0 * max(batches) * 3 * size ** 2, f"batch {max(batches)} at {size}x{size}", "use smaller batches")
    results = []
    for provider in providers:  # one fresh process each: its peak memory is its own
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            results.append(pool.submit(measure, os.fspath(artifact), provider, list(batches), runs, warmup, seed,
                                       threads, None if cache_dir is None else os.fspath(cache_dir)).result())
    return {"artifact": str(artifact), "model": metadata["model"], "input_size": size,
            "model_mb": Path(artifact).stat().st_size / 1e6, "machine": machine(), "seed": seed, "runs": runs,
            "warmup": warmup, "threads": threads, "memory": MEMORY_NOTE, "results": results}


def table(report: dict) -> str:
    """Markdown table of a :func:`benchmark` report, one row per (provider, batch)."""
    lines = [f"{report['model']} model {report['artifact']} ({report['model_mb']:.1f} MB, input "
             f"{report['input_size']}x{report['input_size']}); {report['machine']}; {report['runs']} timed runs "
             f"after {report['warmup']} warm-up runs per batch", "",
             "| provider | batch | mean ms/image | P50 ms/image | P99 ms/image | images/s | peak RSS MB | GPU MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        gpu = "n/a" if r["gpu_memory_mb"] is None else f"{r['gpu_memory_mb']:.0f}"
        lines += [f"| {r['provider']} | {row['batch']} | {row['mean_ms_per_image']:.3f} | {row['median_ms_per_image']:.3f} "
                  f"| {row['p99_ms_per_image']:.3f} | {row['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {gpu} |"
                  for row in r["rows"]]
    return "\n".join(lines + ["", f"Memory: {report['memory']}."]) + "\n"


def write_json(report: dict, path: str | os.PathLike) -> None:
    from fabguard.outputs import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
