"""Thresholds from normal validation scores, and PASS / REVIEW / REJECT decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabguard.anomaly.base import Thresholds
from fabguard.errors import InputError


def test_decisions_follow_the_thresholds():
    t = Thresholds.calibrate(np.arange(100.0), review_quantile=0.9, reject_quantile=0.99)
    assert t.review < t.reject
    decisions = t.decide([t.review - 1, t.review, t.review + 0.5, t.reject, t.reject + 1])
    assert decisions.tolist() == ["PASS", "PASS", "REVIEW", "REVIEW", "REJECT"]


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
       q=st.floats(0.5, 1.0))
def test_validation_false_alarms_never_exceed_the_target(scores, q):
    """On the normal images that set them, thresholds flag at most a share 1 - q (never everything)."""
    t = Thresholds.calibrate(scores, review_quantile=q, reject_quantile=q)
    flagged = (t.decide(scores) != "PASS").mean()
    # k / n and 1 - q are each rounded once in float64 (values <= 1): 2 unit round-offs apart at most
    assert flagged <= 1 - q + np.finfo(float).eps
    assert flagged < 1.0


def test_identical_validation_scores_flag_nothing_there():
    t = Thresholds.calibrate(np.full(20, 3.0))
    assert (t.decide(np.full(20, 3.0)) == "PASS").all()
    assert t.decide([3.0001])[0] == "REJECT"


def test_single_validation_image_still_passes_itself():
    t = Thresholds.calibrate([0.7])
    assert t.decide([0.7])[0] == "PASS" and t.n_val == 1


@pytest.mark.parametrize("scores, rq, xq, message", [
    ([], 0.95, 0.99, "no validation scores"),
    ([1.0, np.nan], 0.95, 0.99, "NaN"),
    ([1.0, 2.0], 0.99, 0.95, "review quantile <= reject quantile"),
    ([1.0, 2.0], 0.0, 0.5, "0 < review"),
])
def test_bad_calibration_input(scores, rq, xq, message):
    with pytest.raises(InputError, match=message):
        Thresholds.calibrate(scores, rq, xq)


def test_nan_score_is_refused_not_passed():
    t = Thresholds.calibrate([1.0, 2.0])
    with pytest.raises(InputError, match="NaN"):
        t.decide([np.nan])
