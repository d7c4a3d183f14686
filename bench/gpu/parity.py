"""ONNX Runtime providers (CUDA, TensorRT FP32 / FP16, or the CPU) against PyTorch on the same images.

For each saved detector (.pt) and its exported artifact (.onnx): PyTorch scores the test images of
DATA (an MVTec-layout folder), each provider scores the same float32 batch, and the report gives the
largest score and heatmap differences (absolute, and relative to the largest PyTorch value) and how
many PASS / REVIEW / REJECT decisions differ. It reports; the assertions are in
tests/anomaly/test_anomaly_gpu.py (FP16 is expected to differ more, and by how much is what this
measures). Part of bench/gpu/check.sh; runs on the CPU provider too (tests/anomaly/test_anomaly_gpu_check.py).

    python bench/gpu/parity.py --models pca.pt vae.pt --data DATA --providers cuda tensorrt --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parity(model: Path, data: Path, providers: list[str], cache_dir: Path) -> dict:
    import numpy as np

    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.benchmark import PROVIDERS, check_providers
    from fabguard.anomaly.images import load_dataset
    from fabguard.anomaly.runtime import Inspector
    from fabguard.runtime.parity import max_abs_diff

    check_providers(providers)
    detector = Detector.load(model)
    images = load_dataset(data, detector.input_size, "test").images
    scores, heatmaps = detector.score(images)
    decisions = detector.decide(scores)
    rows = []
    for provider in providers:
        names, fp16 = PROVIDERS[provider]
        inspector = Inspector(model.with_suffix(".onnx"), providers=names, fp16=fp16, cache_dir=cache_dir / provider)
        if inspector.providers[0] != names[0]:
            raise SystemExit(f"{provider}: ONNX Runtime fell back to {inspector.providers[0]}")
        result = inspector.inspect(images)
        rows.append({"provider": provider, "n_images": len(images),
                     "max_abs_diff_score": max_abs_diff(result.scores, scores),
                     "max_rel_diff_score": max_abs_diff(result.scores, scores) / float(np.abs(scores).max()),
                     "max_abs_diff_heatmap": max_abs_diff(result.heatmaps, heatmaps),
                     "max_rel_diff_heatmap": max_abs_diff(result.heatmaps, heatmaps) / float(np.abs(heatmaps).max()),
                     "decisions_differing": int((result.decisions != decisions).sum())})
    return {"model": detector.kind, "file": str(model), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="saved detectors (.pt), each with its .onnx beside")
    parser.add_argument("--data", required=True, help="MVTec-layout folder whose test images are scored")
    parser.add_argument("--providers", nargs="+", required=True, help="cpu, cuda, tensorrt, tensorrt-fp16")
    parser.add_argument("--out", required=True, help="folder for parity.json and parity.md")
    args = parser.parse_args()
    from fabguard.outputs import atomic_path

    out = Path(args.out)
    report = [parity(Path(m), Path(args.data), args.providers, out / "trt_cache") for m in args.models]
    lines = ["| model | provider | images | max abs score diff | rel. | max abs heatmap diff | rel. | decisions differing |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {row['provider']} | {row['n_images']} | {row['max_abs_diff_score']:.3g} | "
              f"{row['max_rel_diff_score']:.3g} | {row['max_abs_diff_heatmap']:.3g} | {row['max_rel_diff_heatmap']:.3g} | "
              f"{row['decisions_differing']} |" for r in report for row in r["rows"]]
    with atomic_path(out / "parity.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out / "parity.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
