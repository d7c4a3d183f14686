"""Train and evaluate every model on MVTec AD transistor over several seeds; write the comparison.

Each (model, seed) run trains on train/good (80/20 split by that seed), evaluates on test/ and stores
its metrics under --work (resumable: finished runs are reused). The seed-0 model of every
configuration is also exported to ONNX and checked against PyTorch on the 100 test images.
Results: bench/results/anomaly/transistor/ (comparison.md / .csv, all_metrics.json, parity.json, a few
plots of seed 0); rows of configurations not run this time are kept from the earlier results there. Models and full evaluation output stay under --work (git-ignored).

    OMP_WAIT_POLICY=PASSIVE python bench/anomaly/transistor_eval.py
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fabguard.anomaly.base import Detector
from fabguard.anomaly.evaluate import METRICS, evaluate, write_comparison, write_json
from fabguard.anomaly.export import export_onnx, parity
from fabguard.anomaly.feature_vae import FeatureVAEDetector
from fabguard.anomaly.images import load_dataset
from fabguard.anomaly.patchcore import PatchCoreDetector
from fabguard.anomaly.pca import PCADetector
from fabguard.anomaly.plots import loss_curves
from fabguard.anomaly.vae import VAEDetector, parameter_count
from fabguard.outputs import atomic_path
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# name -> (factory(seed), default seeds). PCA k=200 needs 200 training images: with 213 normal images
# that means a 6% validation split (13 images) instead of 20%. The VAE's no-augmentation ablation (15-30
# min per run on 2 shared cores) gets one seed. feature_vae_* are the feature VAE's ablations (issue 12):
# 20 instead of 60 epochs, KL weight beta, latent size, block 14 alone (on the whole 256 input: its 8 x 8
# grid the two stride-2 blocks halve exactly, the 224 crop's 7 x 7 they do not) and block 4 alone. Mean
# instead of max position error needs no retraining: bench/anomaly/feature_vae_latent.py rescores the
# feature_vae models.
FIVE = (0, 1, 2, 3, 4)
GALLERIES = ("pca_k200_val6pct", "vae", "patchcore", "feature_vae")  # error galleries kept in the repo for these
CONFIGS = {
    "pca_k10": (lambda s: PCADetector(n_components=10, seed=s), FIVE),
    "pca_k50": (lambda s: PCADetector(n_components=50, seed=s), FIVE),
    "pca_k100": (lambda s: PCADetector(n_components=100, seed=s), FIVE),
    "pca_k200_val6pct": (lambda s: PCADetector(n_components=200, val_fraction=0.06, seed=s), FIVE),
    # the settings the recorded rows were measured with; today's default (5%, selected on a 64-dim
    # projection) is measured in bench/anomaly/coreset_speed.py
    "patchcore": (lambda s: PatchCoreDetector(coreset_ratio=0.1, coreset_projection=None, seed=s), FIVE),
    "patchcore_coreset1pct": (lambda s: PatchCoreDetector(coreset_ratio=0.01, coreset_projection=None, seed=s),
                              FIVE),
    "vae": (lambda s: VAEDetector(augment="component", seed=s), FIVE),
    "vae_noaug": (lambda s: VAEDetector(augment="none", seed=s), (0,)),
    "feature_vae": (lambda s: FeatureVAEDetector(seed=s), FIVE),
    "feature_vae_e20": (lambda s: FeatureVAEDetector(epochs=20, seed=s), (0,)),
    "feature_vae_beta1": (lambda s: FeatureVAEDetector(beta=1.0, seed=s), (0, 1)),
    "feature_vae_beta0.01": (lambda s: FeatureVAEDetector(beta=0.01, seed=s), (0, 1)),
    "feature_vae_latent32": (lambda s: FeatureVAEDetector(latent_dim=32, seed=s), (0, 1)),
    "feature_vae_block14": (lambda s: FeatureVAEDetector(layers=(14,), crop_size=None, seed=s), (0, 1)),
    "feature_vae_block4": (lambda s: FeatureVAEDetector(layers=(4,), seed=s), (0, 1)),
}


def trained_parameters(module) -> int:
    """Parameters that training changes (a frozen pretrained backbone, ``features``, excluded)."""
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith("features."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad_256" / "transistor"))
    parser.add_argument("--work", default=str(REPO / "out" / "anomaly" / "transistor"))
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "anomaly" / "transistor"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds for every configuration (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run that is exported and plotted")
    args = parser.parse_args()
    work, results_dir = Path(args.work), Path(args.results)
    test = load_dataset(args.data, 256, "test")
    normals = load_dataset(args.data, 256, "train")
    runs, parities = [], {}
    for name in args.configs:
        for seed in args.seeds or CONFIGS[name][1]:
            run_dir = work / "eval" / f"{name}_s{seed}"
            model_path = work / "models" / f"{name}_s{seed}.pt"
            if (run_dir / "metrics.json").is_file() and model_path.is_file():
                result = json.loads((run_dir / "metrics.json").read_text())
            else:
                torch.manual_seed(seed)
                start, cpu_start = time.perf_counter(), time.process_time()
                detector = CONFIGS[name][0](seed).fit(normals.images, progress=True)
                fit_seconds, fit_cpu = time.perf_counter() - start, time.process_time() - cpu_start
                detector.save(model_path)
                result = evaluate(detector, test, run_dir, name, normals, progress=True)
                result["fit_seconds"], result["fit_cpu_seconds"] = fit_seconds, fit_cpu
                result["parameters"] = parameter_count(detector.model_) if detector.has_latent else None
                result["trained_parameters"] = trained_parameters(detector.model_) if detector.has_latent else None
                if detector.has_latent:
                    result["best_epoch"], result["epochs_run"] = detector.best_epoch_, len(detector.history_)
                write_json(result, run_dir / "metrics.json")
            result["seed"] = seed
            runs.append(result)
            print(f"{name} seed {seed}: " + ", ".join(f"{label} {result[key]:.3f}" for key, label in METRICS
                                                     if result.get(key) is not None), flush=True)
        detector = Detector.load(work / "models" / f"{name}_s{args.seed}.pt")
        onnx_path = export_onnx(detector, work / "models" / f"{name}_s{args.seed}.onnx")
        parities[name] = parity(detector, onnx_path, test.images)
        print(f"{name}: ONNX Runtime vs PyTorch {parities[name]}", flush=True)
        keep, source = results_dir / name, work / "eval" / f"{name}_s{args.seed}"
        keep.mkdir(parents=True, exist_ok=True)
        for plot in ("roc.png", "score_distribution.png"):
            shutil.copyfile(source / plot, keep / plot)
        for plot in ("gallery_false_negatives.png", "gallery_false_positives.png"):
            if name in GALLERIES and (source / plot).is_file():  # photos: 128-colour copies keep the repo small
                with Image.open(source / plot) as image, atomic_path(keep / plot) as tmp:
                    image.convert("RGB").quantize(128).save(tmp, format="PNG", optimize=True)
        if getattr(detector, "history_", None):
            loss_curves(detector.history_, keep / "loss_curves.png", detector.loss_label)
    earlier, earlier_parity = results_dir / "all_metrics.json", results_dir / "parity.json"
    if earlier.is_file():  # keep the other configurations' rows (runs of hours are not repeated for one row)
        runs = [r for r in json.loads(earlier.read_text()) if r["name"] not in args.configs] + runs
        parities = {**{k: v for k, v in json.loads(earlier_parity.read_text()).items() if k not in args.configs},
                    **parities}
        runs.sort(key=lambda r: list(CONFIGS).index(r["name"]) if r["name"] in CONFIGS else len(CONFIGS))
    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    note = "\n".join([
        "# MVTec AD transistor (256x256): image AUROC, AUPRC, FNR at FPR 5%, pixel AUROC",
        "",
        f"Command (latest run; see docs/anomaly.md for all): `{command}`. Each seed sets the train / validation split, the VAE's initialisation",
        "and the coreset's start; several runs give mean ± sd over seeds (sample sd).",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "Test set: 60 normal + 40 defective images (one image = 2.5% FNR).",
    ])
    write_comparison(runs, results_dir, note=note + "\n\n" + cost_table(runs) + per_type_table(runs))
    write_json(parities, results_dir / "parity.json")
    table = [f"# ONNX Runtime (CPU) vs PyTorch on the 100 transistor test images (seed-{args.seed} models)", "",
             f"Command (latest run): `{command}`", "",
             "| model | max abs diff score | max abs diff heatmap | max abs score | max abs diff latent | max abs latent |",
             "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {name} | {p['max_abs_diff_score']:.2e} | {p['max_abs_diff_heatmap']:.2e} | {p['max_abs_score']:.4g} | "
              + (f"{p['max_abs_diff_latent']:.2e} | {p['max_abs_latent']:.4g} |" if "max_abs_diff_latent" in p else "n/a | n/a |")
              for name, p in parities.items()]
    with atomic_path(results_dir / "parity.md") as tmp:
        tmp.write_text("\n".join(table) + "\n")
    print((results_dir / "comparison.md").read_text())
    return 0


def cost_table(runs: list[dict]) -> str:
    """Training time, parameter counts and epochs per model (mean ± sd over its runs)."""
    def cell(values, fmt):
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        return fmt.format(np.mean(values)) + (f" ± {fmt.format(np.std(values, ddof=1))}" if len(values) > 1 else "")

    lines = [("Training cost (fit = feature extraction + training + calibration; wall seconds depend on what else "
              "runs on the shared cores, CPU seconds (all threads, recorded since issue 12) much less; parameters: "
              "all / trained, a frozen backbone excluded from trained):"), "",
             "| model | runs | fit seconds | fit CPU seconds | parameters | trained parameters | best epoch / epochs run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == name]
        epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in mine if r.get("best_epoch"))
        lines.append(f"| {name} | {len(mine)} | {cell([r.get('fit_seconds') for r in mine], '{:.0f}')} | "
                     f"{cell([r.get('fit_cpu_seconds') for r in mine], '{:.0f}')} | "
                     f"{cell([r.get('parameters') for r in mine], '{:,.0f}')} | "
                     f"{cell([r.get('trained_parameters') for r in mine], '{:,.0f}')} | {epochs or 'n/a'} |")
    return "\n".join(lines) + "\n\n"


def per_type_table(runs: list[dict]) -> str:
    """Mean detection rate per defect type at the FPR = 5% operating point."""
    types = sorted({t for r in runs for t in r["detection_rate_by_type"]})
    lines = [("Detection rate per type at the FPR = 5% operating point (for `good`: false-alarm rate), "
              "mean over seeds:"), "", "| model | " + " | ".join(types) + " |", "| --- |" + " --- |" * len(types)]
    for name in dict.fromkeys(r["name"] for r in runs):
        rates = [np.mean([r["detection_rate_by_type"][t]["rate"] for r in runs if r["name"] == name]) for t in types]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in rates) + " |")
    return "\n".join(lines) + "\n\nImage-level metrics:\n"


if __name__ == "__main__":
    sys.exit(main())
