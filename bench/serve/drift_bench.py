"""How fast the drift monitor alerts, and how often it alerts for nothing, on synthetic image streams:

    python bench/serve/drift_bench.py                   # the full run: writes bench/results/serve/drift.md, .json
    python bench/serve/drift_bench.py --repeats 2 --fa-windows 40 --out /tmp/drift   # a quick run

A real exported model (default: ``pca-wafer-v1.1.0``, the bundled model the recorded results were measured
with, fitted again by :mod:`bench.serve.pca_wafer`) scores each image with ONNX Runtime; its
PASS images go through :func:`fabguard.serve.drift.compare` exactly as the service does (the newest
``--window`` PASS scores and 128-value embeddings against the model's validation reference), every
``--step`` images, as the service's periodic refresh would.

1. Change points: ``--window`` normal images, then a brightness shift (+delta on every pixel) or a new defect
   type (a faint stain, not among the training defects, on a share of the images). Reported: images after
   the change until each test alerts (median and range over ``--repeats`` streams), beside the REJECT-rate
   rule (REJECT share of the newest ``--window`` images above 5%), and what the line did meanwhile (PASS and
   REJECT shares: a large shift empties the PASS window and the REJECT-rate alert fires instead).
2. Stationary stream: ``--fa-windows`` disjoint windows of ``--window`` PASS images; the share that alerts
   (with a Clopper-Pearson 95% interval), and the share of rolling evaluations (every ``--step`` images)
   that alert.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REJECT_LIMIT = 0.05  # alerts.yml FabguardRejectRateHigh, applied here to the newest --window images
sys.path.insert(0, str(ROOT))


def stain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new defect type: a faint smooth stain (Gaussian blob, amplitude 0.01 to 0.03, width 8-15% of the
    image) brighter or darker than the die pattern: unlike the training defects (scratches, particles)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.2, 0.8, 2)
    sigma = rng.uniform(0.08, 0.15)
    amplitude = rng.uniform(0.01, 0.03) * rng.choice([-1, 1])
    return np.clip(image + amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)), 0, 1)


def stream(n: int, rng: np.random.Generator, size: int, brightness: float = 0.0, stain_share: float = 0.0) -> np.ndarray:
    """``n`` synthetic normal wafer images (N, 3, S, S) float32, shifted by ``brightness`` (clipped to [0, 1]),
    a share ``stain_share`` of them with a stain, rounded to 8 bits as the PNGs the service receives (and the
    bundled model was trained on) are."""
    from fabguard.anomaly.synthetic import normal_image
    from fabguard.serve.bundle import as_8bit

    grays = []
    for _ in range(n):
        image = normal_image(size, rng)
        if stain_share and rng.random() < stain_share:
            image = stain(image, rng)
        grays.append(np.clip(image + brightness, 0, 1))
    return np.repeat(as_8bit(np.stack(grays))[:, None], 3, axis=1)


def observe(inspector, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, decisions, 128-value embeddings) as the service logs them: the latent when it is 128 wide,
    else the heatmap grid."""
    from fabguard.anomaly.reference import EMBEDDING_DIM, grid_embedding

    result = inspector.inspect(images)
    latents = result.latents
    embeddings = latents if latents is not None and latents.shape[1] == EMBEDDING_DIM else grid_embedding(result.heatmaps)
    return result.scores, result.decisions, embeddings.astype(np.float32)


def until_alert(inspector, baseline, rng, args, **change) -> dict:
    """Images after a change point until each test alerts (None: not within ``--max-images``)."""
    from fabguard.serve.drift import compare

    scores, decisions, embeddings = observe(inspector, stream(args.window * 2, rng, args.size))
    keep = decisions == "PASS"
    pass_scores, pass_emb = list(scores[keep][-args.window:]), list(embeddings[keep][-args.window:])
    recent = list(decisions[-args.window:])  # every decision: the REJECT-rate rule's view
    first = {"score": None, "latent": None, "reject_rate": None}
    seen = n_pass = n_reject = 0
    while seen < args.max_images and None in first.values():
        s, d, e = observe(inspector, stream(args.step, rng, args.size, **change))
        seen += len(s)
        n_pass += int((d == "PASS").sum())
        n_reject += int((d == "REJECT").sum())
        pass_scores = (pass_scores + list(s[d == "PASS"]))[-args.window:]
        pass_emb = (pass_emb + list(e[d == "PASS"]))[-args.window:]
        recent = (recent + list(d))[-args.window:]
        report = compare(np.array(pass_scores), np.array(pass_emb), baseline, args.alpha, args.min_window)
        fired = {"score": report["score"]["alarm"], "latent": report["latent"]["alarm"],
                 "reject_rate": recent.count("REJECT") / len(recent) > REJECT_LIMIT}
        for test in first:
            if first[test] is None and fired[test]:
                first[test] = seen
    return {**first, "images": seen, "pass_share": n_pass / seen, "reject_share": n_reject / seen}


def false_alarms(inspector, baseline, rng, args) -> dict:
    """Disjoint windows of a stationary stream, and rolling evaluations every ``--step`` images."""
    from scipy.stats import binomtest

    from fabguard.serve.drift import compare

    alarms = {"score": 0, "latent": 0, "either": 0}
    rolling = {"score": 0, "latent": 0, "either": 0, "evaluations": 0}
    pvalues = []
    pass_scores, pass_emb = [], []
    windows = 0
    while windows < args.fa_windows:
        s, d, e = observe(inspector, stream(args.step, rng, args.size))
        pass_scores += list(s[d == "PASS"])
        pass_emb += list(e[d == "PASS"])
        if len(pass_scores) >= args.window:  # rolling: the newest window, as the periodic refresh sees it
            report = compare(np.array(pass_scores[-args.window:]), np.array(pass_emb[-args.window:]), baseline,
                             args.alpha, args.min_window)
            rolling["evaluations"] += 1
            for test in ("score", "latent"):
                rolling[test] += report[test]["alarm"]
            rolling["either"] += report["alarm"]
        if len(pass_scores) >= args.window * (windows + 1):
            lo, hi = args.window * windows, args.window * (windows + 1)
            report = compare(np.array(pass_scores[lo:hi]), np.array(pass_emb[lo:hi]), baseline, args.alpha,
                             args.min_window)
            pvalues.append((report["score"]["pvalue"], report["latent"]["pvalue"]))
            for test in ("score", "latent"):
                alarms[test] += report[test]["alarm"]
            alarms["either"] += report["alarm"]
            windows += 1
    out = {"windows": windows, "images_per_window": args.window, "rolling_evaluations": rolling["evaluations"]}
    for test in alarms:
        ci = binomtest(alarms[test], windows).proportion_ci(0.95, method="exact")
        out[test] = {"alarms": alarms[test], "rate": alarms[test] / windows, "ci95": [ci.low, ci.high],
                     "rolling_rate": rolling[test] / max(rolling["evaluations"], 1)}
    p = np.array(pvalues, dtype=float)
    out["median_pvalue"] = {"score": float(np.nanmedian(p[:, 0])), "latent": float(np.nanmedian(p[:, 1]))}
    return out


def summary(values: list) -> dict:
    found = [v for v in values if v is not None]
    return {"median": float(np.median(found)) if len(found) == len(values) else None,
            "min": min(found) if found else None, "max": max(found) if found else None,
            "alerted": f"{len(found)}/{len(values)}"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported anomaly detector (default: pca-wafer-v1.1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=500, help="PASS inspections per window (service default)")
    parser.add_argument("--min-window", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--step", type=int, default=25, help="images between evaluations")
    parser.add_argument("--repeats", type=int, default=5, help="streams per change scenario")
    parser.add_argument("--max-images", type=int, default=4000, help="images after a change before giving up")
    parser.add_argument("--fa-windows", type=int, default=200, help="disjoint stationary windows")
    parser.add_argument("--brightness", type=float, nargs="+", default=[0.001, 0.002, 0.005, 0.01])
    parser.add_argument("--stain-share", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    parser.add_argument("--size", type=int, default=64, help="image side (the model resizes to its own)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve" / "drift")
    args = parser.parse_args(argv)

    from fabguard.anomaly.runtime import Inspector
    from fabguard.serve.drift import Baseline

    from bench.serve.pca_wafer import pca_wafer

    with tempfile.TemporaryDirectory() as work:
        path = args.model or pca_wafer(Path(work))[0]
        inspector = Inspector(path, providers=["CPUExecutionProvider"], threads=1)  # the session has read the file
    if inspector.drift_reference is None:
        raise SystemExit(f"{path}: the model carries no drift reference (export it with this fabguard)")
    baseline = Baseline.from_validation(inspector.drift_reference, inspector.thresholds.review)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    scenarios = []
    for kind, values in (("brightness", args.brightness), ("stain_share", args.stain_share)):
        for value in values:
            runs = [until_alert(inspector, baseline, rng, args, **{kind: value}) for _ in range(args.repeats)]
            scenarios.append({"change": kind, "value": value, "runs": runs,
                              "score": summary([r["score"] for r in runs]),
                              "latent": summary([r["latent"] for r in runs]),
                              "reject_rate": summary([r["reject_rate"] for r in runs]),
                              "pass_share": float(np.mean([r["pass_share"] for r in runs])),
                              "reject_share": float(np.mean([r["reject_share"] for r in runs]))})
            print(kind, value, scenarios[-1]["score"], scenarios[-1]["latent"], flush=True)
    stationary = false_alarms(inspector, baseline, rng, args)
    print("stationary", json.dumps(stationary), flush=True)
    result = {"model": str(path.name), "reference": baseline.as_dict(), "args": {k: str(v) if isinstance(v, Path) else v
                                                                                for k, v in vars(args).items()},
              "scenarios": scenarios, "stationary": stationary, "seconds": time.perf_counter() - start,
              "machine": f"{platform.machine()}, {platform.python_version()}"}
    write(result, args.out)
    return result


def write(result: dict, out: Path) -> None:
    from fabguard.outputs import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    a, ref, fa = result["args"], result["reference"], result["stationary"]
    cell = lambda s: "never" if s["min"] is None else (  # noqa: E731
        f"{s['median']:.0f} ({s['min']}-{s['max']})" if s["median"] is not None else f"{s['min']}-{s['max']}")
    lines = [
        "# Drift monitor: images until the alert, and false alarms",
        "",
        f"Produced by `python bench/serve/drift_bench.py --seed {a['seed']} --window {a['window']} --step {a['step']} "
        f"--repeats {a['repeats']} --fa-windows {a['fa_windows']}` ({result['seconds']:.0f} s, {result['machine']}).",
        f"Model `{result['model']}`; reference: {ref['note']}; alpha {a['alpha']}; the window is the newest "
        f"{a['window']} PASS images, evaluated every {a['step']} images (in process, `fabguard.serve.drift.compare`).",
        "",
        "## Images after the change until the alert",
        "",
        f"Median (min-max) over {a['repeats']} seeded streams, counting every image after the change (PASS or not), "
        f"in steps of {a['step']}; 'never': no alert within {a['max_images']} images. PASS / REJECT share: of the "
        "images after the change until both tests alerted or gave up.",
        "",
        "| change | KS on PASS scores | latent mean / variance | REJECT rate > 5% | alerted (KS, latent, REJECT) "
        "| PASS share | REJECT share |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["scenarios"]:
        what = f"brightness +{s['value']}" if s["change"] == "brightness" else f"new defect (stain) on {s['value']:.0%}"
        lines.append(f"| {what} | {cell(s['score'])} | {cell(s['latent'])} | {cell(s['reject_rate'])} | "
                     f"{s['score']['alerted']}, {s['latent']['alerted']}, {s['reject_rate']['alerted']} | "
                     f"{s['pass_share']:.1%} | {s['reject_share']:.1%} |")
    lines += [
        "",
        "## False alarms on a stationary stream",
        "",
        f"{fa['windows']} disjoint windows of {fa['images_per_window']} PASS images of normal wafers (and "
        f"{fa['rolling_evaluations']} rolling evaluations every {a['step']} images, overlapping, as the service "
        "refreshes).",
        "",
        "| test | alarms | rate (95% CI) | rolling evaluations alarming | median p |",
        "|---|---|---|---|---|",
    ]
    for test in ("score", "latent", "either"):
        f = fa[test]
        median = fa["median_pvalue"].get(test)
        lines.append(f"| {test} | {f['alarms']} / {fa['windows']} | {f['rate']:.3f} ({f['ci95'][0]:.3f}-"
                     f"{f['ci95'][1]:.3f}) | {f['rolling_rate']:.3f} | "
                     f"{'' if median is None else f'{median:.3g}'} |")
    lines += [
        "",
        "The reference is one fixed sample (the model's validation images), so the false-alarm rate measured here is",
        "this model's: conditional on its reference, not the nominal alpha averaged over references.",
    ]
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
