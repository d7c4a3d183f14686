"""Real data (MVTec AD transistor at 256x256) from ../shared/data; skipped where it is not present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

TRANSISTOR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad_256" / "transistor"
pytestmark = pytest.mark.skipif(not TRANSISTOR.is_dir(), reason=f"{TRANSISTOR} not present")


@pytest.fixture(scope="module")
def transistor_test():
    from fabguard.anomaly.images import load_dataset

    return load_dataset(TRANSISTOR, 256, "test")


def test_transistor_layout_is_read_completely(transistor_test):
    from fabguard.anomaly.images import load_dataset

    test = transistor_test
    assert len(test) == 100 and test.labels.sum() == 40
    assert sorted(set(test.defect_types)) == ["bent_lead", "cut_lead", "damaged_case", "good", "misplaced"]
    defective = test.labels == 1
    assert all(m.any() for m in test.masks[defective]) and not test.masks[~defective].any()
    assert len(load_dataset(TRANSISTOR, 64, "train")) == 213


def test_patchcore_on_a_transistor_subset(transistor_test):
    """A small PatchCore (40 normal images) already separates the defects it is shown."""
    from fabguard.anomaly.images import load_images
    from fabguard.anomaly.patchcore import PatchCoreDetector

    train = load_images(sorted((TRANSISTOR / "train" / "good").iterdir())[:40], 256)
    with pytest.warns(UserWarning, match="largest of the 8 validation scores"):  # 40 * 0.2 < 1 / 0.05
        detector = PatchCoreDetector(coreset_ratio=0.05, seed=0).fit(train)
    pick = np.r_[np.flatnonzero(transistor_test.labels == 0)[:10], np.flatnonzero(transistor_test.labels == 1)[::4]]
    scores, heatmaps = detector.score(transistor_test.images[pick])
    assert roc_auc_score(transistor_test.labels[pick], scores) >= 0.85
    assert roc_auc_score(transistor_test.masks[pick].ravel(), heatmaps.ravel()) >= 0.85
