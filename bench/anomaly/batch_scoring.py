"""Batch scoring throughput (images/s): `fabguard anomaly score` in one process vs on a local Ray instance.

Scores the transistor images (train/good and test, 313 PNGs at 256x256) with an exported artifact,
``--repeats`` times per engine into a fresh output folder each time; reports the median images/s (all
runs in the JSON). The Ray instance is started before timing (a cluster is already running in
production); the actors' start (one runtime session each) is inside the timing, as it is in every job.

    OMP_WAIT_POLICY=PASSIVE python bench/anomaly/batch_scoring.py --artifact M.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="ONNX file written by `fabguard anomaly export`")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad_256" / "transistor"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding threads / Ray actors")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "anomaly"))
    args = parser.parse_args()
    import ray

    from fabguard.anomaly.batch_score import list_items, score_archive
    from fabguard.anomaly.benchmark import machine
    from fabguard.anomaly.runtime import Inspector
    from fabguard.outputs import atomic_path

    inputs = [Path(args.data) / "train" / "good", Path(args.data) / "test"]
    n = len(list_items(inputs))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs: dict[str, list[float]] = {"local": [], "ray": []}
    for repeat in range(args.repeats):
        for engine in runs:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                counts = score_archive(args.artifact, inputs, Path(tmp) / "scores", engine=engine, chunk=args.chunk,
                                       workers=args.workers)
                seconds = time.perf_counter() - start
            assert counts["scored"] == n and counts["errors"] == 0, counts
            runs[engine].append(n / seconds)
            print(f"{engine} run {repeat + 1}: {n / seconds:.1f} images/s", file=sys.stderr, flush=True)
    ray.shutdown()
    model = Inspector.read(args.artifact)["model"]
    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    median = {engine: statistics.median(values) for engine, values in runs.items()}
    lines = ["# Batch scoring throughput: one process vs local Ray", "", f"Command: `{command}`",
             f"Machine: {machine()}.", f"Model: {model} ({args.artifact}); {n} transistor PNGs (256x256); chunk "
             f"{args.chunk}; {args.workers} decoding threads (local) or Ray actors of 1 CPU and 1 ONNX Runtime "
             f"thread each (ray); median of {args.repeats} runs.", "",
             "| engine | images/s (median) | runs |", "| --- | ---: | --- |"]
    lines += [f"| {engine} | {median[engine]:.1f} | {', '.join(f'{v:.1f}' for v in runs[engine])} |" for engine in runs]
    lines += ["", f"Ray / local: {median['ray'] / median['local']:.2f}."]
    results = Path(args.results)
    with atomic_path(results / "batch_scoring.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(results / "batch_scoring.json") as tmp:
        tmp.write_text(json.dumps({"command": command, "machine": machine(), "model": model, "images": n,
                                   "chunk": args.chunk, "workers": args.workers, "images_per_s": runs,
                                   "median_images_per_s": median}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
