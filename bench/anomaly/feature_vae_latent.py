"""The feature VAE's latent space on MVTec AD transistor, and its score aggregation, over seeds (issue 12).

For each seed's model of bench/anomaly/transistor_eval.py (``feature_vae``):
- separation: squared Mahalanobis distance of a test image's mu to the training images' mu (mean and
  Ledoit-Wolf covariance: 170 points in 128 dimensions need shrinkage), as an anomaly score: image AUROC,
  AUPRC, FNR at FPR 5%;
- clustering of defect types without labels: k-means (k = 4) on the defective test images' mu, standardised
  with the training latents' statistics, and a diagonal Gaussian mixture on their first 10 principal
  components; adjusted Rand index against the true types; the same k-means on the mean-pooled backbone
  features (standardised the same way) as the baseline the latent space should beat;
- aggregation: the same model's image score as the mean instead of the largest position error, and as the
  largest raw position error (not divided by the training images' mean error at that position).
Writes bench/results/anomaly/transistor/feature_vae_latent.md / .json and, for the seed-0 model,
feature_vae/latent_projection.png (2-D PCA of mu, coloured by type).

    OMP_WAIT_POLICY=PASSIVE python bench/anomaly/feature_vae_latent.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from fabguard.anomaly.base import Detector
from fabguard.anomaly.evaluate import operating_point, write_json
from fabguard.anomaly.images import load_dataset, split
from fabguard.outputs import atomic_path
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, average_precision_score, roc_auc_score
from sklearn.mixture import GaussianMixture

REPO = Path(__file__).resolve().parents[2]
N_TYPES = 4


def image_metrics(labels, scores) -> dict:
    return {"image_auroc": float(roc_auc_score(labels, scores)),
            "image_auprc": float(average_precision_score(labels, scores)),
            "fnr_at_fpr5": operating_point(labels, scores)["fnr"]}


def pooled_features(detector, images) -> np.ndarray:
    """Mean over positions of the standardised backbone features (N, D): the no-VAE baseline."""
    with torch.inference_mode():
        return np.concatenate([detector.model_.embed(torch.from_numpy(images[s:s + 16])).mean((2, 3)).numpy()
                               for s in range(0, len(images), 16)])


def clusters(train, defective, types, seed) -> dict:
    """ARI of k-means on standardised vectors and of a diagonal GMM on their first 10 components."""
    mean, std = train.mean(0), train.std(0) + 1e-8
    x = (defective - mean) / std
    kmeans = KMeans(N_TYPES, n_init=20, random_state=seed).fit_predict(x)
    reduced = PCA(min(10, len(x) - 1), random_state=seed).fit_transform(x)
    gmm = GaussianMixture(N_TYPES, covariance_type="diag", n_init=5, random_state=seed).fit(reduced).predict(reduced)
    return {"kmeans_ari": float(adjusted_rand_score(types, kmeans)), "gmm_ari": float(adjusted_rand_score(types, gmm))}


def projection_plot(train_mu, test_mu, kinds, path) -> None:
    """2-D PCA of mu (fitted on all test images), training latents in grey."""
    mean, std = train_mu.mean(0), train_mu.std(0) + 1e-8
    pca = PCA(2, random_state=0).fit((test_mu - mean) / std)
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    for ax, show_normal in ((left, True), (right, False)):
        if show_normal:
            p = pca.transform((train_mu - mean) / std)
            ax.scatter(p[:, 0], p[:, 1], s=8, c="lightgrey", label="train (normal)")
        for i, kind in enumerate(sorted(set(kinds))):
            if kind == "good" and not show_normal:
                continue
            p = pca.transform((test_mu[kinds == kind] - mean) / std)
            good = kind == "good"
            ax.scatter(p[:, 0], p[:, 1], s=18, label=f"test {kind}", marker="x" if good else "o",
                       color="black" if good else f"C{i}")
        ax.set(xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=7)
    left.set_title("latent mu (feature VAE, seed 0): training and test images", fontsize=9)
    right.set_title("defective test images only, coloured by true type", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad_256" / "transistor"))
    parser.add_argument("--work", default=str(REPO / "out" / "anomaly" / "transistor"))
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "anomaly" / "transistor"))
    parser.add_argument("--config", default="feature_vae")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    test, normals = load_dataset(args.data, 256, "test"), load_dataset(args.data, 256, "train")
    labels, kinds = np.asarray(test.labels), np.asarray(test.defect_types)
    defective = labels == 1
    runs = []
    for seed in args.seeds:
        path = Path(args.work) / "models" / f"{args.config}_s{seed}.pt"
        if not path.is_file():
            print(f"seed {seed}: no model {path}, skipped", flush=True)
            continue
        detector = Detector.load(path)
        train_idx, _ = split(len(normals), detector.val_fraction, detector.seed)
        train_mu, test_mu = detector.latent(normals.images[train_idx]), detector.latent(test.images)
        cov = LedoitWolf().fit(train_mu)
        mahalanobis = cov.mahalanobis(test_mu)
        detector.model_.aggregation = "mean"
        mean_scores, _ = detector.score(test.images)
        detector.model_.aggregation, detector.model_.scale = "max", torch.ones_like(detector.model_.scale)
        raw_scores, _ = detector.score(test.images)
        train_f, test_f = pooled_features(detector, normals.images[train_idx]), pooled_features(detector, test.images)
        run = {"seed": seed, "latent_dim": int(test_mu.shape[1]),
               "mahalanobis": image_metrics(labels, mahalanobis),
               "latent_clusters": clusters(train_mu, test_mu[defective], kinds[defective], seed),
               "pooled_feature_clusters": clusters(train_f, test_f[defective], kinds[defective], seed),
               "mean_aggregation": image_metrics(labels, mean_scores),
               "raw_max": image_metrics(labels, raw_scores)}
        runs.append(run)
        print(run, flush=True)
        if seed == args.seeds[0]:
            projection_plot(train_mu, test_mu, kinds, Path(args.results) / args.config / "latent_projection.png")
    write_json(runs, Path(args.results) / f"{args.config}_latent.json")

    def cell(get):
        values = [get(r) for r in runs]
        return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    seeds = f"{len(runs)} seeds, mean ± sd" if len(runs) > 1 else "1 seed"
    lines = [f"# Feature VAE latent space and score aggregation on MVTec AD transistor ({seeds})",
             "", f"Command: `{command}` (models of `bench/anomaly/transistor_eval.py --configs {args.config}`).",
             "Test set: 60 normal + 40 defective images (10 per type: bent_lead, cut_lead, damaged_case, misplaced).",
             "", "| score | image AUROC | AUPRC | FNR@FPR5% |", "| --- | --- | --- | --- |"]
    for key, label in (("mahalanobis", "Mahalanobis distance of mu to the training latents"),
                       ("mean_aggregation", "mean position error (instead of the largest)"),
                       ("raw_max", "largest raw position error (not relative to the training mean)")):
        lines.append(f"| {label} | {cell(lambda r, k=key: r[k]['image_auroc'])} | "
                     f"{cell(lambda r, k=key: r[k]['image_auprc'])} | {cell(lambda r, k=key: r[k]['fnr_at_fpr5'])} |")
    lines += ["", ("Clustering the 40 defective test images into 4 groups without labels (adjusted Rand index "
                   "against the true types; 0 = chance, 1 = the true grouping):"), "",
              "| vectors | k-means ARI | GMM (diagonal, 10 PCs) ARI |", "| --- | --- | --- |"]
    for key, label in (("latent_clusters", "latent mu (128)"),
                       ("pooled_feature_clusters", "mean-pooled backbone features (232), baseline")):
        lines.append(f"| {label} | {cell(lambda r, k=key: r[k]['kmeans_ari'])} | "
                     f"{cell(lambda r, k=key: r[k]['gmm_ari'])} |")
    lines += ["", f"Projection: `{args.config}/latent_projection.png` (seed {args.seeds[0]})."]
    with atomic_path(Path(args.results) / f"{args.config}_latent.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
