"""Per-image inference latency, model size on disk and peak memory of the trained transistor models.

Batch 1, 8, 32 and 64; mean and P99 over at least 100 timed runs per batch (after warm-up), per-image
latency = batch time / batch size. Runtimes: PyTorch eager (CPU) and ONNX Runtime CPU, plus ONNX Runtime
CUDA and TensorRT where this onnxruntime build and a GPU have them. Every (model, runtime) pair runs in a
fresh process, so its peak resident memory (max RSS, host) is its own; where nvidia-smi exists, the GPU
memory held by the process at the end is recorded too. Input: random images (latency does not depend on
content). Needs the models of bench/anomaly/transistor_eval.py (seed 0, .pt and .onnx). Rows of (model,
runtime) pairs not measured this time are kept from the earlier results. The timing loop is the one of
``fabguard anomaly benchmark`` (:func:`fabguard.anomaly.benchmark.time_batches`), which measures one
artifact on a user's own machine.

    OMP_WAIT_POLICY=PASSIVE python bench/anomaly/latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = ("pca_k50", "vae", "patchcore_coreset1pct", "patchcore", "feature_vae")
RUNTIMES = {"pytorch-eager-cpu": None, "onnxruntime-cpu": ["CPUExecutionProvider"],
            "onnxruntime-cuda": ["CUDAExecutionProvider"],
            "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}


def worker(args) -> None:
    """Time one (model, runtime) pair; print one JSON line."""
    from fabguard.anomaly.benchmark import gpu_memory_mb, rss_mb, time_batches  # `fabguard anomaly benchmark`'s

    base_rss = rss_mb()
    if args.runtime == "pytorch-eager-cpu":
        import torch

        from fabguard.anomaly.base import Detector

        detector = Detector.load(args.pt)
        size = detector.input_size

        def run(x):
            with torch.inference_mode():
                return detector.model_(torch.from_numpy(x))
    else:
        from fabguard.anomaly.runtime import Inspector

        inspector = Inspector(args.onnx, providers=RUNTIMES[args.runtime], max_batch=max(args.batches),
                              cache_dir=Path(args.onnx).with_suffix(".trt_cache"))
        if inspector.providers[0] != RUNTIMES[args.runtime][0]:
            raise SystemExit(f"{args.runtime}: got provider {inspector.providers[0]}")
        size = inspector.input_size

        def run(x):
            return inspector.session.run(None, {"images": x})

    rows = time_batches(run, size, args.batches, args.runs, args.warmup, args.seed)
    for row in rows:
        print(f"  {args.runtime} batch {row['batch']}: mean {row['mean_ms_per_image']:.2f} ms/image, "
              f"P99 {row['p99_ms_per_image']:.2f}", file=sys.stderr, flush=True)
    print(json.dumps({"rows": rows, "rss_after_imports_mb": base_rss, "peak_rss_mb": rss_mb(),
                      "gpu_memory_mb": gpu_memory_mb()}))


def available_runtimes() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [r for r, p in RUNTIMES.items() if p is None or p[0] in have]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--work", default=str(REPO / "out" / "anomaly" / "transistor" / "models"))
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "anomaly"))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtimes", nargs="+", help="default: every available one")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--pt", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 100:
        parser.error("the benchmark needs at least 100 runs per batch size")
    if args.worker:
        worker(args)
        return 0
    import onnxruntime as ort
    import torch

    runtimes = args.runtimes or available_runtimes()
    unavailable = [r for r in RUNTIMES if r not in available_runtimes()]
    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    machine = (f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    earlier = Path(args.results) / "latency.json"
    kept = [r for r in json.loads(earlier.read_text())["results"]
            if r["model"] not in args.models or r["runtime"] not in runtimes] if earlier.is_file() else []
    results = []
    for name in args.models:
        pt, onnx = Path(args.work) / f"{name}_s0.pt", Path(args.work) / f"{name}_s0.onnx"
        for runtime in runtimes:
            print(f"{name} / {runtime}", file=sys.stderr, flush=True)
            worker_command = [sys.executable, __file__, "--worker", "--runtime", runtime, "--pt", str(pt),
                              "--onnx", str(onnx), "--runs", str(args.runs), "--warmup", str(args.warmup),
                              "--seed", str(args.seed),
                              "--batches", *map(str, args.batches)]
            done = subprocess.run(worker_command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} / {runtime} failed:\n{done.stderr}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            results.append({"model": name, "runtime": runtime, "pt_mb": pt.stat().st_size / 1e6,
                            "onnx_mb": onnx.stat().st_size / 1e6, **measured})
            table = write_results(Path(args.results), args, kept + results, unavailable, command, machine)
    print(table)
    return 0


def write_results(results_dir: Path, args, results: list, unavailable: list, command: str, machine: str) -> str:
    """Write latency.md / .csv / .json for the pairs measured so far; rewritten after every pair, so an
    interrupted run keeps what it finished."""
    from fabguard.anomaly.evaluate import write_json
    from fabguard.outputs import atomic_path

    lines = ["# Inference latency per image (ms), model size, peak memory", "",
             f"Command (latest run; earlier rows kept, see docs/anomaly.md): `{command}`", f"Machine: {machine}.",
             f"Not measured here (no GPU / provider on this machine): {', '.join(unavailable) or 'none'}.",
             f"Each cell: mean / P99 over {args.runs} timed runs of one batch after {args.warmup} warm-up runs, "
             "divided by the batch size.", "",
             "| model | runtime | " + " | ".join(f"batch {b}" for b in args.batches)
             + " | .pt MB | .onnx MB | peak RSS MB |",
             "| --- | --- |" + " --- |" * (len(args.batches) + 3)]
    csv = ["model,runtime,batch,runs,mean_ms_per_image,median_ms_per_image,p99_ms_per_image,images_per_s,"
           "peak_rss_mb_so_far,pt_mb,onnx_mb"]
    for r in results:
        cells = [f"{row['mean_ms_per_image']:.2f} / {row['p99_ms_per_image']:.2f}" for row in r["rows"]]
        lines.append(f"| {r['model']} | {r['runtime']} | " + " | ".join(cells)
                     + f" | {r['pt_mb']:.1f} | {r['onnx_mb']:.1f} | {r['peak_rss_mb']:.0f} |")
        csv += [f"{r['model']},{r['runtime']},{row['batch']},{row['runs']},{row['mean_ms_per_image']:.4f},"
                f"{row['median_ms_per_image']:.4f},{row['p99_ms_per_image']:.4f},{row['images_per_s']:.2f},"
                f"{row['peak_rss_mb_so_far']:.0f},{r['pt_mb']:.2f},{r['onnx_mb']:.2f}" for row in r["rows"]]
    lines += ["", "Peak RSS is the host process maximum over all batch sizes (it includes the runtime libraries: "
              "see rss_after_imports_mb in latency.json); the CSV has the running maximum after each batch size."]
    with atomic_path(results_dir / "latency.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(results_dir / "latency.csv") as tmp:
        tmp.write_text("\n".join(csv) + "\n")
    write_json({"command": command, "machine": machine, "results": results}, results_dir / "latency.json")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
