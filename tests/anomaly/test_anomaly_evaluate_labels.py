"""Evaluation with image-level labels only: an MVTec-layout folder without ground_truth/, or a CSV."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fabguard.anomaly.evaluate import NO_MASKS, labelled_entries, load_labelled
from fabguard.cli import main
from fabguard.errors import InputError


@pytest.fixture(scope="module")
def unmasked(synthetic_root, tmp_path_factory):
    """The synthetic dataset without its ground_truth/ folder (test/ and train/ kept)."""
    root = tmp_path_factory.mktemp("unmasked") / "wafer"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("ground_truth"))
    return root


def _csv(test_set, path, types=False):
    rows = ["path,label" + (",defect_type" if types else "")]
    rows += [f"{p},{lab}" + (f",{t}" if types else "") for p, lab, t in zip(test_set.paths, test_set.labels,
                                                                          test_set.defect_types)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_folder_without_masks_gives_the_same_images_and_labels(unmasked, test_set):
    entries, has_masks = labelled_entries(unmasked)
    assert not has_masks and all(mask is None for _, _, mask in entries)
    loaded = load_labelled(unmasked, 64)
    assert loaded.masks is None
    np.testing.assert_array_equal(loaded.images, test_set.images)  # same files, same decoding
    np.testing.assert_array_equal(loaded.labels, test_set.labels)
    assert loaded.defect_types == test_set.defect_types


def test_csv_with_and_without_defect_types(test_set, tmp_path):
    plain = load_labelled(_csv(test_set, tmp_path / "plain.csv"), 64)
    assert plain.masks is None and plain.paths == test_set.paths
    np.testing.assert_array_equal(plain.labels, test_set.labels)
    assert set(plain.defect_types) == {"good", "defective"}
    typed = load_labelled(_csv(test_set, tmp_path / "typed.csv", types=True), 64)
    assert typed.defect_types == test_set.defect_types


def test_relative_csv_paths_are_read_from_the_csv_folder(test_set, synthetic_root, tmp_path):
    csv = synthetic_root.parent / "relative.csv"
    rows = ["path,label"] + [f"{os.path.relpath(p, csv.parent)},{lab}" for p, lab in zip(test_set.paths, test_set.labels)]
    csv.write_text("\n".join(rows) + "\n")
    entries, _ = labelled_entries(csv)
    assert [p.resolve() for p, _, _ in entries] == [Path(p).resolve() for p in test_set.paths]


@pytest.mark.parametrize("content, message", [
    ("file,label\n", "row 1: expected the header path,label"),
    ("path,label\n{img},2\n", "row 2, column label: expected 0 .normal. or 1"),
    ("path,label\n{img},0\nmissing.png,1\n", "row 3, column path: no such image file"),
    ("path,label\n{img},0\n{img},1\n", "row 3, column path: .* repeats row 2"),
    ("path,label,defect_type\n{img},1,good\n", "row 2, column defect_type: 'good' contradicts label 1"),
    ("path,label\n{img}\n", "row 2: 1 columns, expected 2"),
    ("path,label\n", "no rows after the header"),
])
def test_bad_csv_is_refused_with_row_and_column(test_set, tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content.format(img=test_set.paths[0]))
    with pytest.raises(InputError, match=message):
        labelled_entries(tmp_path / "labels.csv")


def test_partial_masks_are_still_refused(synthetic_root, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(synthetic_root, root)
    next((root / "ground_truth").rglob("*_mask.png")).unlink()
    with pytest.raises(InputError, match="missing ground-truth mask"):
        labelled_entries(root)


def test_cli_evaluates_without_masks_like_with_them(normals, synthetic_root, unmasked, test_set, tmp_path, capsys):
    from fabguard.anomaly.pca import PCADetector

    model = tmp_path / "pca.pt"
    PCADetector(n_components=8, input_size=64).fit(normals.images).save(model)
    runs = {"masks": synthetic_root, "folder": unmasked, "csv": _csv(test_set, tmp_path / "labels.csv", types=True)}
    saved = {}
    for name, data in runs.items():
        assert main(["anomaly", "evaluate", "--model", str(model), "--data", str(data), "--out",
                     str(tmp_path / name), "--quiet"]) == 0
        saved[name] = json.loads((tmp_path / name / "pca" / "metrics.json").read_text())
        printed = capsys.readouterr().out
        assert (NO_MASKS in printed) == (name != "masks")
    assert saved["masks"]["pixel_auroc"] is not None and saved["masks"]["pixel_metrics"] == "available"
    for name in ("folder", "csv"):
        assert saved[name]["pixel_auroc"] is None and saved[name]["pixel_metrics"] == NO_MASKS
        for key in ("image_auroc", "image_auprc", "fnr_at_fpr5", "detection_rate_by_type", "decisions_by_type"):
            assert saved[name][key] == saved["masks"][key], key  # the same images scored the same way
    assert "| pca | 1 |" in (tmp_path / "csv" / "comparison.md").read_text()
