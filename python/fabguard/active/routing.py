"""Routing rules (which products get the advanced inspection), budgets and the cost model.

Every rule maps a batch of student outputs to a routing score (higher = inspect first); the batch mode
inspects the top share, the streaming mode compares each product with a threshold calibrated on
validation scores so that the budget is met on average.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fabguard import registry
from fabguard.errors import InputError
from fabguard.params import NONE, SEED, Estimator, Interval, check


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Costs per product: every product pays ``basic``; routed products pay ``advanced``; a fault
    passed as good pays ``miss``; a good product flagged pays ``false_alarm``. Decisions flag a product
    when its calibrated fault probability exceeds the Bayes threshold ``false_alarm / (false_alarm + miss)``."""

    basic: float = 1.0
    advanced: float = 10.0
    miss: float = 500.0
    false_alarm: float = 50.0

    def __post_init__(self):
        for name in ("basic", "advanced", "miss", "false_alarm"):
            check(name, getattr(self, name), Interval(float, 0, None), owner="CostModel")
        if self.miss + self.false_alarm == 0:
            raise InputError(f"cost model {self}: costs must be >= 0 and miss + false_alarm > 0")

    @property
    def threshold(self) -> float:
        return self.false_alarm / (self.false_alarm + self.miss)

    def per_product(self, y: np.ndarray, final_score: np.ndarray, routed: np.ndarray) -> float:
        """Realised cost per product: inspections actually made plus the errors of the final decisions.
        The advanced cost is counted only for routed products."""
        y, flag = np.asarray(y), np.asarray(final_score) > self.threshold
        errors = self.miss * np.sum(~flag & (y == 1)) + self.false_alarm * np.sum(flag & (y == 0))
        return float(self.basic + self.advanced * np.mean(routed) + errors / len(y))


VALUE_TARGETS = ("change", "brier", "cost")


def inspection_value(p_student: np.ndarray, p_teacher: np.ndarray, y: np.ndarray, cost: CostModel) -> np.ndarray:
    """What the advanced inspection was worth for each product, ``(n, 3)`` in the order of
    ``VALUE_TARGETS``, from calibrated student and teacher probabilities (out-of-fold) and the label:

    - ``change``: |p_teacher - p_student|, the expected prediction change of Shim et al. (2021); label-free,
      so it also rewards changes for the worse;
    - ``brier``: reduction of the squared error (p - y)^2, i.e. how much the prediction improved;
    - ``cost``: miss / false-alarm cost saved by deciding with the teacher instead of the student.

    A regression on basic features then estimates the expected value given what the basic inspection saw.
    """
    y = np.asarray(y)
    flag_s, flag_t = p_student > cost.threshold, p_teacher > cost.threshold

    def decision_cost(flag):
        return np.where(flag, (1 - y) * cost.false_alarm, y * cost.miss)

    return np.column_stack([np.abs(p_teacher - p_student), (p_student - y) ** 2 - (p_teacher - y) ** 2,
                            decision_cost(flag_s) - decision_cost(flag_t)])


@dataclasses.dataclass
class Batch:
    """What a rule may look at: the calibrated student fault score, each ensemble member's probability
    and the routing model's predicted values of inspection ``(n, targets)`` (all from basic features)."""

    fault_score: np.ndarray
    member_proba: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.fault_score)


class Rule(Estimator):
    """A routing rule: ``score(batch)`` maps student outputs to routing scores (higher = inspect first).
    Rules are found by name in :mod:`fabguard.registry` (kind ``routing_rule``); :meth:`for_model` builds
    one from what every fitted model knows (its decision threshold and seed), so a new rule is one class
    plus its registration."""

    @classmethod
    def for_model(cls, threshold: float, seed: int) -> "Rule":
        return cls()

    def score(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError


class RandomRule(Rule):
    """Random sampling, the baseline every fab uses. Seeded; successive calls draw fresh numbers, so
    a stream of single products is sampled at the budgeted rate (the generator is made at first use)."""

    _parameter_constraints = {"seed": [SEED]}

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def for_model(cls, threshold: float, seed: int) -> "RandomRule":
        return cls(seed)

    def score(self, batch: Batch) -> np.ndarray:
        if getattr(self, "rng_", None) is None:
            self._validate_params()
            self.rng_ = np.random.default_rng(self.seed)
        return self.rng_.random(len(batch))


class MarginRule(Rule):
    """Student uncertainty as closeness of its calibrated score to the decision threshold."""

    _parameter_constraints = {"threshold": [Interval(float, 0, 1)]}

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    @classmethod
    def for_model(cls, threshold: float, seed: int) -> "MarginRule":
        return cls(threshold)

    def score(self, batch: Batch) -> np.ndarray:
        self._validate_params()
        return -np.abs(batch.fault_score - self.threshold)


class SpreadRule(Rule):
    """Student uncertainty as the spread (standard deviation) of its ensemble members' probabilities."""

    def score(self, batch: Batch) -> np.ndarray:
        return batch.member_proba.std(axis=1)


class ValueRule(Rule):
    """Learned value of inspection: the routing model's prediction, from basic features, of what the
    advanced inspection would be worth for this product (``target``: one column of ``inspection_value``)."""

    target = ""

    def score(self, batch: Batch) -> np.ndarray:
        return batch.value[:, VALUE_TARGETS.index(self.target)]


class ValueChangeRule(ValueRule):
    """Expected prediction change (label-free)."""

    target = "change"


class ValueBrierRule(ValueRule):
    """Expected Brier-score gain."""

    target = "brier"


class ValueCostRule(ValueRule):
    """Expected decision cost saved."""

    target = "cost"


def make_rules(threshold: float, seed: int, names=None) -> dict[str, Rule]:
    """The registered rules (or those ``names``), built for a model with this threshold and seed."""
    names = registry.available("routing_rule") if names is None else names
    return {name: registry.get("routing_rule", name).for_model(threshold, seed) for name in names}


def _check_budget(fraction: float | None, money: float | None, cost: CostModel | None) -> None:
    check("budget", fraction, Interval(float, 0, 1), NONE)
    check("money", money, Interval(float, 0, None), NONE)
    if (fraction is None) == (money is None):
        raise InputError("give exactly one budget: a fraction of products or an amount of money")
    if money is not None and (cost is None or cost.advanced <= 0):
        raise InputError(f"money budget {money}: needs money >= 0 and an advanced inspection cost > 0")


def batch_count(n: int, fraction: float | None = None, money: float | None = None,
                cost: CostModel | None = None) -> int:
    """How many of ``n`` products a batch budget pays for: a ``fraction`` of them, or the advanced
    inspections that ``money`` buys at ``cost.advanced`` each."""
    _check_budget(fraction, money, cost)
    if money is not None:
        return int(min(n, np.floor(money / cost.advanced + 1e-9)))
    return int(round(fraction * n))


def stream_fraction(fraction: float | None = None, money: float | None = None,
                    cost: CostModel | None = None) -> float:
    """The share of a stream to inspect on average: ``fraction``, or what ``money`` per product buys."""
    _check_budget(fraction, money, cost)
    return fraction if money is None else min(1.0, money / cost.advanced)


def ranks(scores: np.ndarray) -> np.ndarray:
    """Each product's place when sorted by routing score, highest first (ties broken by position):
    the top ``k`` are ``ranks(scores) < k``, so one sort serves every budget."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    return place


def select_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Batch mode: the ``k`` highest routing scores (ties broken by position)."""
    return ranks(scores) < k


def stream_threshold(validation_scores: np.ndarray, fraction: float) -> float:
    """Streaming mode: the routing-score threshold that validation products exceed at rate ``fraction``."""
    _check_budget(fraction, None, None)
    if fraction == 0:
        return np.inf
    if fraction == 1:
        return -np.inf
    return float(np.quantile(validation_scores, 1 - fraction))
