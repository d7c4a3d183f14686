"""Evaluation metrics, output files and the comparison table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fabguard.anomaly.evaluate import comparison_table, evaluate, metrics, operating_point, write_comparison
from fabguard.anomaly.images import ImageSet
from fabguard.errors import InputError
from fabguard.runtime.parity import float32_bound

F64 = 2.0**-29  # float64's unit round-off over float32's: scales float32_bound to float64 arithmetic


def _set(labels, kinds, masks=None):
    n = len(labels)
    return ImageSet(np.zeros((n, 3, 4, 4), np.float32), [f"img{i}" for i in range(n)], np.asarray(labels), kinds, masks)


def test_operating_point_by_hand():
    labels = np.array([0] * 20 + [1] * 10)
    scores = np.concatenate([np.arange(20.0), [5.0], np.arange(25.0, 34.0)])
    op = operating_point(labels, scores)
    # fnr = 1 - 9 / 10 in float64: one rounded division, an exact subtraction (Sterbenz)
    assert op["threshold"] == 19.0 and op["fpr"] == 0.05
    assert op["fnr"] == pytest.approx(0.1, rel=0, abs=float32_bound(1, 2) * F64)


def test_metrics_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 1]
    kinds = ["good"] * 4 + ["scratch", "scratch", "particle"]
    masks = np.zeros((7, 4, 4), bool)
    masks[4:, 0, 0] = True
    heat = masks.astype(np.float32)  # perfect localisation
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.25, 0.8])
    decisions = np.array(["PASS"] * 4 + ["REJECT", "PASS", "REVIEW"])
    m = metrics(_set(labels, kinds, masks), scores, heat, decisions)
    # trapezoids over the 7-point ROC curve, values <= 1, in float64
    assert m["image_auroc"] == pytest.approx(10 / 12, rel=0, abs=float32_bound(1, 7) * F64)
    assert m["pixel_auroc"] == 1.0
    # 0.25 is below every admissible threshold; 1 - 2 / 3 in float64
    assert m["fnr_at_fpr5"] == pytest.approx(1 / 3, rel=0, abs=float32_bound(1, 2) * F64)
    assert m["detection_rate_by_type"]["scratch"] == {"n": 2, "flagged": 1, "rate": 0.5}
    assert m["detection_rate_by_type"]["particle"]["rate"] == 1.0
    assert m["decisions_by_type"]["scratch"] == {"PASS": 1, "REVIEW": 0, "REJECT": 1}
    assert m["false_negatives"] == ["img5"] and m["false_positives"] == []
    with pytest.raises(InputError, match="both normal and defective"):
        metrics(_set([0, 0], ["good"] * 2), np.array([1.0, 2.0]), np.zeros((2, 4, 4)), np.array(["PASS"] * 2))


def test_evaluate_writes_metrics_plots_and_gallery(detectors, test_set, normals, tmp_path):
    result = evaluate(detectors["vae"], test_set, tmp_path / "vae", "vae", normals)
    saved = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert saved["image_auroc"] == result["image_auroc"]  # JSON writes floats that read back exactly
    for key in ("image_auroc", "image_auprc", "fnr_at_fpr5", "pixel_auroc", "detection_rate_by_type", "thresholds"):
        assert key in saved
    for name in ("score_distribution.png", "roc.png", "loss_curves.png", "scores.csv"):
        assert (tmp_path / "vae" / name).stat().st_size > 0
    lines = (tmp_path / "vae" / "scores.csv").read_text().splitlines()
    assert len(lines) == len(test_set) + 1
    # a deliberately poor detector produces errors, hence galleries
    poor = evaluate(detectors["pca"], _shuffled_labels(test_set), tmp_path / "poor", "poor", normals)
    assert poor["false_negatives"]
    assert (tmp_path / "poor" / "gallery_false_negatives.png").stat().st_size > 0


def _shuffled_labels(test_set):
    """The same images with labels that do not match them (so the detector must err)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test_set))
    return ImageSet(test_set.images, test_set.paths, test_set.labels[order],
                    [test_set.defect_types[i] for i in order], test_set.masks[order])


def test_comparison_table_mean_and_sd(tmp_path):
    runs = [{"name": "a", "image_auroc": v, "image_auprc": 1.0, "fnr_at_fpr5": 0.0, "pixel_auroc": None}
            for v in (0.9, 1.0)] + [{"name": "b", "image_auroc": 0.5, "image_auprc": 0.4, "fnr_at_fpr5": 1.0,
                                      "pixel_auroc": 0.6}]
    md, csv = comparison_table(runs)
    assert "| a | 2 | 0.950 ± 0.071 | 1.000 ± 0.000 | 0.000 ± 0.000 | n/a |" in md
    assert "| b | 1 | 0.500 | 0.400 | 1.000 | 0.600 |" in md
    assert csv.splitlines()[1].startswith("a,2,0.950000,0.070711")
    write_comparison(runs, tmp_path, note="test")
    assert (tmp_path / "comparison.md").read_text().startswith("test")
    assert len(json.loads((tmp_path / "all_metrics.json").read_text())) == 3
