"""Evaluation on a labelled test set (case study 3.6-3.7): metrics, plots, error gallery, JSON, comparison.

Image AUROC and AUPRC (average precision), FNR at FPR = 5%, pixel AUROC over all test pixels (normal
images count as all-negative, as in MVTec AD), detection rate per defect type at the FPR = 5%
operating point, and the PASS / REVIEW / REJECT counts per type at the model's calibrated thresholds.
The FPR = 5% operating point is set on the test normals (what the case study reports); the calibrated
thresholds come from validation normals only (what production uses).

Most sites label whole images, not pixels: the test set is an MVTec-layout folder (``test/<type>/``,
with ``ground_truth/`` masks or without that folder) or a CSV of ``path,label[,defect_type]``
(:func:`labelled_entries`). Without masks the image metrics are the same and the pixel metrics are
reported as not available.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fabguard.anomaly import plots
from fabguard.anomaly.base import DECISIONS, Detector
from fabguard.anomaly.images import EXTENSIONS, NORMAL, ImageSet, dataset_entries, list_images, load_image, load_mask
from fabguard.errors import InputError
from fabguard.outputs import atomic_path
from fabguard.params import POSITIVE_INT, check, check_memory

TARGET_FPR = 0.05
NO_MASKS = "not available: the test set has image-level labels only (no ground-truth masks)"
DEFECTIVE = "defective"  # the defect type of a CSV row labelled 1 without a defect_type column
METRICS = (("image_auroc", "image AUROC"), ("image_auprc", "AUPRC"), ("fnr_at_fpr5", "FNR@FPR5%"),
           ("pixel_auroc", "pixel AUROC"))


def labelled_entries(source: str | os.PathLike) -> tuple[list[tuple[Path, str, Path | None]], bool]:
    """(image, defect type, mask or None) of every test image of ``source``, and whether it has masks;
    every file is checked to exist before any is read.

    ``source`` is an MVTec-layout folder (``test/<type>/``; ``good`` is normal; masks from
    ``ground_truth/<type>/<name>_mask.png`` when that folder exists, then one is needed for every
    defective image) or a CSV file with a header ``path,label`` and optionally ``defect_type``: label 0
    (normal) or 1 (defective), paths relative to the CSV's folder unless absolute.
    """
    source = Path(source)
    if source.is_file():
        return _csv_entries(source), False
    if not source.is_dir():
        raise InputError(f"{source}: no such test set (an MVTec-layout folder or a CSV of path,label)")
    if (source / "ground_truth").is_dir():
        return dataset_entries(source, "test"), True
    if not (source / "test").is_dir():
        raise InputError(f"{source}: a labelled test set needs the MVTec layout test/<type>/ (or give a CSV of "
                         "path,label)")
    types = sorted(d.name for d in (source / "test").iterdir() if d.is_dir())
    if not types:
        raise InputError(f"{source / 'test'}: no defect-type folders")
    return [(path, kind, None) for kind in types for path in list_images(source / "test" / kind)], False


def _csv_entries(path: Path) -> list[tuple[Path, str, None]]:
    """Rows of a ``path,label[,defect_type]`` CSV; errors name the file, row (1 = header) and column."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["path", "label"] or header[2:] not in ([], ["defect_type"]):
            raise InputError(f"{path}: row 1: expected the header path,label (optionally ,defect_type), got "
                             f"{','.join(header) or 'an empty file'}")
        entries, seen = [], {}
        for row_number, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InputError(f"{path}: row {row_number}: {len(row)} columns, expected {len(header)} "
                                 f"({','.join(header)})")
            name, label = row[0].strip(), row[1].strip()
            if label not in ("0", "1"):
                raise InputError(f"{path}: row {row_number}, column label: expected 0 (normal) or 1 (defective), "
                                 f"got {label!r}")
            image = Path(name) if Path(name).is_absolute() else path.parent / name
            if not name or not image.is_file():
                raise InputError(f"{path}: row {row_number}, column path: no such image file {str(image)!r}")
            if image.suffix.lower() not in EXTENSIONS:
                raise InputError(f"{path}: row {row_number}, column path: unsupported image type {image.suffix!r} "
                                 f"(supported: {', '.join(EXTENSIONS)})")
            if image.resolve() in seen:
                raise InputError(f"{path}: row {row_number}, column path: {name} repeats row {seen[image.resolve()]}")
            seen[image.resolve()] = row_number
            kind = row[2].strip() if len(row) > 2 and row[2].strip() else (NORMAL if label == "0" else DEFECTIVE)
            if (kind == NORMAL) != (label == "0"):
                raise InputError(f"{path}: row {row_number}, column defect_type: {kind!r} contradicts label {label} "
                                 f"({NORMAL!r} is the normal type and only it)")
            entries.append((image, kind, None))
    if not entries:
        raise InputError(f"{path}: no rows after the header")
    return entries


def load_labelled(source: str | os.PathLike, size: int, progress: bool = False) -> ImageSet:
    """The labelled test set of ``source`` (see :func:`labelled_entries`) at ``size``; ``masks`` is None
    when it has none."""
    from tqdm.auto import tqdm

    entries, has_masks = labelled_entries(source)
    check_memory(4.0 * len(entries) * (3 + has_masks) * size ** 2,
                 f"{len(entries)} test images of {source} at {size}x{size}", "use a smaller size")
    images, masks = [], []
    for path, _, mask in tqdm(entries, desc=f"loading {Path(source).name}", disable=not progress, leave=False):
        images.append(load_image(path, size))
        if has_masks:
            masks.append(load_mask(mask, size) if mask is not None else np.zeros((size, size), bool))
    return ImageSet(images=np.stack(images), paths=[str(p) for p, _, _ in entries],
                    labels=np.array([int(k != NORMAL) for _, k, _ in entries]),
                    defect_types=[k for _, k, _ in entries], masks=np.stack(masks) if has_masks else None)


def operating_point(labels, scores, target_fpr: float = TARGET_FPR) -> dict:
    """The threshold with the highest TPR whose FPR is at most ``target_fpr`` (flag: score >= threshold)."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    best = np.flatnonzero(fpr <= target_fpr)[-1]
    return {"threshold": float(thresholds[best]), "fpr": float(fpr[best]), "tpr": float(tpr[best]),
            "fnr": float(1.0 - tpr[best]), "roc": (fpr, tpr)}


def metrics(test: ImageSet, scores: np.ndarray, heatmaps: np.ndarray, decisions: np.ndarray) -> dict:
    """All metrics of one model on one test set (plain Python values, JSON-ready)."""
    labels = np.asarray(test.labels)
    if labels.min() == labels.max():
        raise InputError("evaluation needs both normal and defective test images")
    op = operating_point(labels, scores)
    flagged = scores >= op["threshold"]
    types = sorted(set(test.defect_types))
    kinds = np.asarray(test.defect_types)
    per_type = {t: {"n": int((kinds == t).sum()), "flagged": int(flagged[kinds == t].sum()),
                    "rate": float(flagged[kinds == t].mean())} for t in types}
    decided = {t: {d: int(((kinds == t) & (decisions == d)).sum()) for d in DECISIONS} for t in types}
    result = {
        "n_normal": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "image_auprc": float(average_precision_score(labels, scores)),
        "fnr_at_fpr5": op["fnr"],
        "operating_point": {k: op[k] for k in ("threshold", "fpr", "tpr")},
        "pixel_auroc": float(roc_auc_score(test.masks.ravel(), heatmaps.ravel())) if test.masks is not None else None,
        "pixel_metrics": "available" if test.masks is not None else NO_MASKS,
        "detection_rate_by_type": per_type,
        "decisions_by_type": decided,
        "false_negatives": [test.paths[i] for i in np.flatnonzero((labels == 1) & ~flagged)],
        "false_positives": [test.paths[i] for i in np.flatnonzero((labels == 0) & flagged)],
    }
    return result


def evaluate(detector: Detector, test: ImageSet, out_dir: str | os.PathLike, name: str,
             normals: ImageSet | None = None, gallery_size: int = 6, progress: bool = False) -> dict:
    """Score ``test``, write metrics.json, scores.csv and the plots into ``out_dir``; return the metrics."""
    check("gallery_size", gallery_size, POSITIVE_INT, owner="evaluate")
    out = Path(out_dir)
    start = time.perf_counter()
    scores, heatmaps = detector.score(test.images, progress=progress)
    seconds = time.perf_counter() - start
    decisions = detector.decide(scores)
    result = {"name": name, "model": detector.kind, "params": detector.get_params(),
              "thresholds": detector.thresholds_.as_dict(), "train_fingerprint": detector.fingerprint_,
              **metrics(test, scores, heatmaps, decisions), "score_seconds_per_image": seconds / len(test)}
    labels = np.asarray(test.labels)
    op = operating_point(labels, scores)
    plots.score_distribution(scores, labels, op["threshold"], out / "score_distribution.png", name)
    plots.roc(*op["roc"], (op["fpr"], op["tpr"]), result["image_auroc"], out / "roc.png", name)
    vmax = float(np.quantile(heatmaps, 0.999)) or 1.0
    for kind, paths in (("false_negatives", result["false_negatives"]), ("false_positives", result["false_positives"])):
        if not paths:
            continue
        index = np.array([test.paths.index(p) for p in paths])
        index = index[np.argsort(scores[index])]
        index = index[:gallery_size] if kind == "false_negatives" else index[::-1][:gallery_size]
        refs = detector.reference(test.images[index], None if normals is None else normals.images)
        titles = [f"{test.defect_types[i]} {Path(test.paths[i]).name}: score {scores[i]:.4g}" for i in index]
        plots.gallery(test.images[index], refs, heatmaps[index], titles, out / f"gallery_{kind}.png", vmax,
                      detector.reference_label,
                      None if test.masks is None else test.masks[index])
    if getattr(detector, "history_", None):
        plots.loss_curves(detector.history_, out / "loss_curves.png", detector.loss_label)
    with atomic_path(out / "scores.csv") as tmp:
        lines = ["path,defect_type,label,score,decision"]
        lines += [f"{p},{t},{lab},{s:.6g},{d}" for p, t, lab, s, d in
                  zip(test.paths, test.defect_types, labels, scores, decisions)]
        tmp.write_text("\n".join(lines) + "\n")
    write_json(result, out / "metrics.json")
    return result


def write_json(data, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def comparison_table(results: list[dict]) -> tuple[str, str]:
    """Markdown and CSV tables, one row per model name; several runs of a name give mean ± sd (n runs)."""
    names = list(dict.fromkeys(r["name"] for r in results))
    md = ["| model | runs | " + " | ".join(label for _, label in METRICS) + " |",
          "| --- | --- |" + " --- |" * len(METRICS)]
    csv = ["model,runs," + ",".join(f"{key}_mean,{key}_sd" for key, _ in METRICS)]
    for name in names:
        runs = [r for r in results if r["name"] == name]
        values = {key: [r[key] for r in runs if r.get(key) is not None] for key, _ in METRICS}
        md.append(f"| {name} | {len(runs)} | " + " | ".join(_cell(v) if v else "n/a" for v in values.values()) + " |")
        csv.append(f"{name},{len(runs)}," + ",".join(
            f"{np.mean(v):.6f},{np.std(v, ddof=1) if len(v) > 1 else 0.0:.6f}" if v else "," for v in values.values()))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def write_comparison(results: list[dict], out_dir: str | os.PathLike, note: str = "") -> None:
    """comparison.md, comparison.csv and all_metrics.json in ``out_dir``."""
    out = Path(out_dir)
    md, csv = comparison_table(results)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text((note + "\n\n" if note else "") + md)
    with atomic_path(out / "comparison.csv") as tmp:
        tmp.write_text(csv)
    write_json(results, out / "all_metrics.json")

