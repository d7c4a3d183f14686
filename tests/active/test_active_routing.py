import numpy as np
import pytest

from fabguard.active.routing import (VALUE_TARGETS, Batch, CostModel, MarginRule, RandomRule, SpreadRule, ValueRule,
                                     batch_count, inspection_value, make_rules, ranks, select_top, stream_fraction,
                                     stream_threshold)
from fabguard.errors import InputError

COST = CostModel(basic=1, advanced=10, miss=500, false_alarm=50)


def test_cost_per_product_counts_advanced_cost_only_for_routed_products():
    y = np.array([1, 0, 0, 1, 0])
    final = np.array([0.9, 0.5, 0.01, 0.05, 0.02])  # threshold 50/550 = 0.0909
    routed = np.array([True, False, False, False, False])
    # one false alarm (0.5 on a good product), one miss (0.05 on a fault)
    expected = 1 + 10 * 1 / 5 + (500 + 50) / 5
    assert COST.threshold == pytest.approx(50 / 550)
    assert COST.per_product(y, final, routed) == pytest.approx(expected)
    assert COST.per_product(y, final, np.ones(5, bool)) == pytest.approx(expected + 10 * 4 / 5)
    with pytest.raises(InputError, match="costs must be >= 0"):
        CostModel(miss=-1)


def test_inspection_value_targets_by_hand():
    p_s = np.array([0.02, 0.5, 0.3])
    p_t = np.array([0.6, 0.05, 0.35])
    y = np.array([1, 0, 0])
    v = inspection_value(p_s, p_t, y, COST)
    assert v.shape == (3, len(VALUE_TARGETS))
    np.testing.assert_allclose(v[:, 0], [0.58, 0.45, 0.05])
    np.testing.assert_allclose(v[:, 1], [0.98**2 - 0.4**2, 0.25 - 0.0025, 0.09 - 0.35**2])
    # product 0: student misses (500), teacher flags the fault (0); product 1: student false alarm
    # (50), teacher clears it; product 2: both flag a good product
    np.testing.assert_allclose(v[:, 2], [500, 50, 0])


def batch(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    members = rng.random((n, 3))
    return Batch(fault_score=members.mean(axis=1), member_proba=members, value=rng.normal(size=(n, 3)))


def test_rules_score_what_they_claim():
    b = batch()
    np.testing.assert_allclose(MarginRule(0.3).score(b), -np.abs(b.fault_score - 0.3))
    np.testing.assert_allclose(SpreadRule().score(b), b.member_proba.std(axis=1))
    np.testing.assert_array_equal(ValueRule("cost").score(b), b.value[:, 2])
    a, c = RandomRule(7).score(b), RandomRule(7).score(b)
    np.testing.assert_array_equal(a, c)
    assert set(make_rules(0.1, 0)) == {"random", "margin", "spread", "value_change", "value_brier", "value_cost"}


def test_batch_mode_meets_the_budget_exactly():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert select_top(scores, 2).tolist() == [False, True, False, True, False]
    assert batch_count(1000, fraction=0.23) == 230
    assert batch_count(1000, money=455.0, cost=COST) == 45
    assert batch_count(10, money=1e6, cost=COST) == 10
    with pytest.raises(InputError, match="exactly one budget"):
        batch_count(10, fraction=0.1, money=5.0, cost=COST)
    with pytest.raises(InputError, match="not in"):
        batch_count(10, fraction=1.5)


def test_one_ranking_serves_every_budget():
    scores = np.random.default_rng(2).integers(0, 5, size=200).astype(float)  # many ties
    rank = ranks(scores)
    assert sorted(rank) == list(range(200))
    for k in (0, 1, 37, 199, 200):
        assert np.array_equal(rank < k, select_top(scores, k))
        assert scores[rank < k].min(initial=np.inf) >= scores[rank >= k].max(initial=-np.inf)


def test_stream_budget_from_a_share_or_money_per_product():
    assert stream_fraction(0.3) == 0.3
    assert stream_fraction(money=2.0, cost=COST) == pytest.approx(2.0 / COST.advanced)
    assert stream_fraction(money=1e6, cost=COST) == 1.0
    with pytest.raises(InputError, match="advanced inspection cost > 0"):
        stream_fraction(money=2.0, cost=CostModel(advanced=0.0))
    with pytest.raises(InputError, match="money >= 0"):
        stream_fraction(money=-1.0, cost=COST)
    with pytest.raises(InputError, match="exactly one budget"):
        stream_fraction()


def test_streaming_threshold_meets_the_budget_on_average_one_product_at_a_time():
    rng = np.random.default_rng(1)
    validation, stream = rng.gamma(2.0, size=5000), rng.gamma(2.0, size=20000)
    for fraction in (0.05, 0.2, 0.5):
        threshold = stream_threshold(validation, fraction)
        routed = [s > threshold for s in stream]  # one product at a time
        assert np.mean(routed) == pytest.approx(fraction, abs=0.015)
    assert stream_threshold(validation, 0.0) == np.inf and stream_threshold(validation, 1.0) == -np.inf


def test_random_rule_streams_at_the_budgeted_rate():
    rule = RandomRule(3)
    threshold = stream_threshold(rule.score(batch(5000)), 0.1)
    single = Batch(np.zeros(1), np.zeros((1, 3)), np.zeros((1, 3)))
    rate = np.mean([rule.score(single)[0] > threshold for _ in range(5000)])
    assert rate == pytest.approx(0.1, abs=0.015)
