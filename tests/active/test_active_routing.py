import numpy as np
import pytest

from sklearn.base import clone

from fabguard import registry
from fabguard.active.routing import (VALUE_TARGETS, Batch, CostModel, MarginRule, RandomRule, Rule, SpreadRule,
                                     batch_count, inspection_value, make_rules, ranks, select_top, stream_fraction,
                                     stream_threshold)
from active_bounds import float64_bound
from fabguard.errors import InputError

COST = CostModel(basic=1, advanced=10, miss=500, false_alarm=50)


def test_cost_per_product_counts_advanced_cost_only_for_routed_products():
    y = np.array([1, 0, 0, 1, 0])
    final = np.array([0.9, 0.5, 0.01, 0.05, 0.02])  # threshold 50/550 = 0.0909
    routed = np.array([True, False, False, False, False])
    # one false alarm (0.5 on a good product), one miss (0.05 on a fault)
    expected = 1 + 10 * 1 / 5 + (500 + 50) / 5
    assert COST.threshold == 50 / 550  # the same division
    # float64, a few products and sums of terms up to the result's size
    assert abs(COST.per_product(y, final, routed) - expected) <= float64_bound(expected, 6)
    assert abs(COST.per_product(y, final, np.ones(5, bool)) - (expected + 8)) <= float64_bound(expected + 8, 6)
    with pytest.raises(InputError, match="'miss' parameter of CostModel"):
        CostModel(miss=-1)
    with pytest.raises(InputError, match="'advanced' parameter of CostModel"):
        CostModel(advanced=float("nan"))


def test_inspection_value_targets_by_hand():
    p_s = np.array([0.02, 0.5, 0.3])
    p_t = np.array([0.6, 0.05, 0.35])
    y = np.array([1, 0, 0])
    v = inspection_value(p_s, p_t, y, COST)
    assert v.shape == (3, len(VALUE_TARGETS))
    # float64 differences and squares of numbers <= 1: a handful of roundings on terms <= 1
    np.testing.assert_allclose(v[:, 0], [0.58, 0.45, 0.05], rtol=0, atol=float64_bound(2, 3))
    np.testing.assert_allclose(v[:, 1], [0.98**2 - 0.4**2, 0.25 - 0.0025, 0.09 - 0.35**2], rtol=0,
                               atol=float64_bound(4, 4))
    # product 0: student misses (500), teacher flags the fault (0); product 1: student false alarm
    # (50), teacher clears it; product 2: both flag a good product
    np.testing.assert_array_equal(v[:, 2], [500, 50, 0])  # whole numbers: exact


def batch(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    members = rng.random((n, 3))
    return Batch(fault_score=members.mean(axis=1), member_proba=members, value=rng.normal(size=(n, 3)))


def top(rule, b, k):
    """Indices of the ``k`` products ``rule`` sends to the advanced inspection first."""
    return set(np.flatnonzero(select_top(rule.score(b), k)))


def test_each_rule_routes_the_products_it_is_meant_to():
    # product:          0     1     2     3
    fault = np.array([0.02, 0.28, 0.33, 0.95])
    members = np.array([[0.02, 0.02], [0.05, 0.51], [0.32, 0.34], [0.9, 1.0]])
    value = np.array([[0.0, 0.1, 9.0], [0.5, 0.0, 0.0], [0.0, 0.7, 0.0], [0.9, 0.0, 0.0]])
    b = Batch(fault, members, value)
    assert top(MarginRule(0.3), b, 2) == {1, 2}  # the two nearest the decision threshold
    assert top(MarginRule(0.9), b, 1) == {3}
    assert top(SpreadRule(), b, 1) == {1}  # members disagree most
    rules = make_rules(threshold=0.3, seed=0)
    assert top(rules["value_change"], b, 1) == {3} and top(rules["value_brier"], b, 1) == {2}
    assert top(rules["value_cost"], b, 1) == {0}
    assert rules["margin"].threshold == 0.3


def test_rules_are_found_by_name_and_follow_the_estimator_contract():
    assert registry.available("routing_rule") == ["random", "margin", "spread", "value_change", "value_brier",
                                                  "value_cost"]
    rule = RandomRule(7)
    b = batch()
    first = rule.score(b)
    np.testing.assert_array_equal(clone(rule).score(b), first)  # the seed, not a generator, is the parameter
    assert not np.array_equal(rule.score(b), first)  # a rule in use keeps drawing fresh numbers
    assert clone(MarginRule(0.2)).get_params() == {"threshold": 0.2}
    with pytest.raises(InputError, match="'seed' parameter of RandomRule"):
        RandomRule(-3).score(b)
    with pytest.raises(InputError, match="'threshold' parameter of MarginRule"):
        MarginRule(float("nan")).score(b)
    with pytest.raises(InputError, match="unknown routing rule 'best'"):
        make_rules(0.1, 0, names=["best"])


class FirstComeRule(Rule):
    """A plug-in rule for the test below: inspects products in arrival order."""

    def score(self, b):
        return -np.arange(len(b), dtype=float)


def test_a_new_rule_is_one_class_plus_its_registration(monkeypatch):
    monkeypatch.setitem(registry._ADDED["routing_rule"], "first_come", f"{__name__}:FirstComeRule")
    rules = make_rules(0.1, 0)
    assert top(rules["first_come"], batch(10), 3) == {0, 1, 2}


def test_batch_mode_meets_the_budget_exactly():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert select_top(scores, 2).tolist() == [False, True, False, True, False]
    assert batch_count(1000, fraction=0.23) == 230
    assert batch_count(1000, money=455.0, cost=COST) == 45
    assert batch_count(10, money=1e6, cost=COST) == 10
    with pytest.raises(InputError, match="exactly one budget"):
        batch_count(10, fraction=0.1, money=5.0, cost=COST)
    with pytest.raises(InputError, match="'budget' parameter"):
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
    assert stream_fraction(money=2.0, cost=COST) == 2.0 / COST.advanced
    assert stream_fraction(money=1e6, cost=COST) == 1.0
    with pytest.raises(InputError, match="advanced inspection cost > 0"):
        stream_fraction(money=2.0, cost=CostModel(advanced=0.0))
    with pytest.raises(InputError, match="'money' parameter"):
        stream_fraction(money=-1.0, cost=COST)
    with pytest.raises(InputError, match="'money' parameter"):
        stream_fraction(money=float("nan"), cost=COST)
    with pytest.raises(InputError, match="exactly one budget"):
        stream_fraction()


def test_streaming_threshold_meets_the_budget_on_average_one_product_at_a_time():
    rng = np.random.default_rng(1)
    validation, stream = rng.gamma(2.0, size=5000), rng.gamma(2.0, size=20000)
    for fraction in (0.05, 0.2, 0.5):
        threshold = stream_threshold(validation, fraction)
        routed = [s > threshold for s in stream]  # one product at a time
        # statistical, not rounding: sd of the rate ~0.0035 (20000 draws) plus ~0.007 from the validation
        # quantile (5000 draws) at fraction 0.5; 0.015 is about 2 sd at the widest, seeded
        assert np.mean(routed) == pytest.approx(fraction, abs=0.015)
    assert stream_threshold(validation, 0.0) == np.inf and stream_threshold(validation, 1.0) == -np.inf


def test_random_rule_streams_at_the_budgeted_rate():
    rule = RandomRule(3)
    threshold = stream_threshold(rule.score(batch(5000)), 0.1)
    single = Batch(np.zeros(1), np.zeros((1, 3)), np.zeros((1, 3)))
    rate = np.mean([rule.score(single)[0] > threshold for _ in range(5000)])
    assert rate == pytest.approx(0.1, abs=0.015)
