"""Figures for evaluation and training: score distributions, ROC, error gallery, loss curves.

Uses matplotlib's object API (no pyplot state), every file written through ``atomic_path``.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from fabguard.outputs import atomic_path


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def score_distribution(scores, labels, threshold: float, path, title: str) -> None:
    """Histograms of normal vs defective scores with the operating threshold."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = np.histogram_bin_edges(scores, bins=30)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"normal ({(labels == 0).sum()})")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"defective ({(labels == 1).sum()})")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold at FPR 5%")
    ax.set(xlabel="anomaly score", ylabel="images", title=title)
    ax.legend()
    _save(fig, path)


def roc(fpr, tpr, point: tuple[float, float], auroc: float, path, title: str) -> None:
    """ROC curve with the FPR = 5% operating point marked."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.plot(*point, "o", color="red", label=f"FPR {point[0]:.3f}, TPR {point[1]:.3f}")
    ax.axvline(0.05, color="red", linewidth=0.6, linestyle="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    _save(fig, path)


def gallery(images, references, heatmaps, titles, path, vmax: float, reference_name: str, masks=None) -> None:
    """One row per image: the image, the model's normal reference, the heatmap over the image."""
    rows = len(images)
    fig = Figure(figsize=(7.5, 2.5 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, ref, heat, title) in enumerate(zip(images, references, heatmaps, titles)):
        a, b, c = axes[row]
        a.imshow(image.transpose(1, 2, 0))
        a.set_title(title, fontsize=8)
        b.imshow(ref.transpose(1, 2, 0))
        b.set_title(reference_name, fontsize=8)
        c.imshow(image.transpose(1, 2, 0))
        c.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
        if masks is not None and masks[row].any():
            c.contour(masks[row], levels=[0.5], colors="white", linewidths=0.8)
        c.set_title("heatmap" + (" (white: true defect)" if masks is not None and masks[row].any() else ""),
                    fontsize=8)
        for ax in axes[row]:
            ax.set_axis_off()
    _save(fig, path)


def loss_curves(history: list[dict], path, recon: str) -> None:
    """VAE losses per epoch: reconstruction (``recon`` names it; train, validation) and total on the left,
    KL on the right (the reconstruction loss, summed over pixels or features, is orders of magnitude larger)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    fig.subplots_adjust(wspace=0.4)
    for key, label in (("train_recon", f"reconstruction ({recon}), train"), ("val_recon", "reconstruction, validation"),
                       ("train_total", "total = reconstruction + beta KL, train")):
        left.plot(epochs, [h[key] for h in history], label=label)
    # log scale: the first epochs' loss is hundreds of times the converged one, which a linear axis flattens
    left.set(xlabel="epoch", ylabel="loss per image (log scale)", title="VAE reconstruction and total loss",
             yscale="log")
    left.legend(fontsize=7)
    right.plot(epochs, [h["train_kl"] for h in history], color="tab:red", label="KL, train")
    right.set(xlabel="epoch", ylabel="KL per image", title="KL and its weight beta (annealed)")
    twin = right.twinx()
    twin.plot(epochs, [h["beta"] for h in history], color="grey", linestyle=":", label="beta")
    twin.set_ylabel("beta")
    right.legend(loc="center right", fontsize=7)
    _save(fig, path)
