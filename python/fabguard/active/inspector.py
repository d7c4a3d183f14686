"""The fitted active-inspection system: preprocessing, teacher, (distilled) student, calibration,
routing model and streaming thresholds, trained from one table where only sampled products have
advanced results.

Training, in order (``fit``):
1. split the table into training and validation products (stratified by label and sampled-ness);
2. teacher on the sampled training products (basic + advanced), plus its out-of-fold logits there;
3. student on all training products (basic), distilled from those out-of-fold teacher logits;
4. Platt / isotonic calibration of teacher and student on validation products;
5. value-of-inspection targets (prediction change, Brier-score gain, decision cost saved) on the
   sampled training products from out-of-fold teacher *and* out-of-fold student predictions (the
   student is re-fitted with each fold's sampled products held out), and the routing model fitted to
   them on basic features;
6. per rule, validation routing scores (streaming thresholds) and the budget that minimises the
   expected cost on the sampled validation products.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import train_test_split

from fabguard.active import data
from fabguard.active.models import Calibrator, NetClassifier, NetRegressor, logit_of, make_teacher, out_of_fold
from fabguard.active.routing import RULES, Batch, CostModel, batch_count, inspection_value, make_rules, ranks
from fabguard.errors import InputError

RATIO_GRID = np.round(np.linspace(0, 1, 51), 4)


@dataclasses.dataclass
class Outputs:
    """Per product: calibrated student and teacher fault scores (teacher NaN where the product has no
    advanced results), the rules' inputs and every rule's routing score."""

    batch: Batch
    routing: dict[str, np.ndarray]
    teacher_score: np.ndarray

    @property
    def fault_score(self) -> np.ndarray:
        return self.batch.fault_score


class ActiveInspector(BaseEstimator):
    """Teacher, student and routing for active inspection; see the module docstring for the steps.

    ``rule`` is the routing rule used by default (all rules are fitted, so they can be compared);
    ``budget`` the default share of products to inspect, None = the cost-minimising share found on
    validation data.
    """

    def __init__(self, roles: data.Roles, teacher="mlp", distill_lambda=0.5, temperature=2.0, n_members=3,
                 hidden=(64, 32), calibration="platt", rule="value_brier", budget=None,
                 cost=CostModel(), validation_fraction=0.25, n_folds=5, random_state=0):
        self.roles, self.teacher, self.distill_lambda, self.temperature = roles, teacher, distill_lambda, temperature
        self.n_members, self.hidden, self.calibration, self.rule = n_members, hidden, calibration, rule
        self.budget, self.cost = budget, cost
        self.validation_fraction, self.n_folds, self.random_state = validation_fraction, n_folds, random_state

    def fit(self, frame: pd.DataFrame, progress=None):
        """Fit on ``frame``; ``progress(step_name)`` is called after each of the six steps (e.g. to
        update a progress bar)."""
        done = progress or (lambda name: None)
        roles, seed = self.roles, self.random_state
        if self.rule not in RULES:
            raise InputError(f"routing rule {self.rule!r} is not one of {list(RULES)}")
        if self.budget is not None and not 0 <= self.budget <= 1:
            raise InputError(f"budget {self.budget} is not a fraction in [0, 1]")
        y = data.labels(frame, roles)
        x = data.features(frame, roles, roles.features)
        data.check_observed(x, roles.basic, "basic")
        data.check_rows_observed(x, roles.basic, "basic")
        s = data.sampled(x, roles)
        if not s.any():
            raise InputError(f"{frame.attrs.get('source', 'table')}: no product has advanced results; "
                             "the teacher needs sampled products")
        data.check_observed(x[s], roles.advanced, "advanced")
        group = 2 * y + s
        if np.sum(group == 3) < 4 or np.sum(group == 1) < 4:
            raise InputError(f"{frame.attrs.get('source', 'table')}: {np.sum(group == 3)} faulty and "
                             f"{np.sum(group == 1)} good sampled products; need at least 4 of each")
        strata = group if np.bincount(group)[np.unique(group)].min() >= 2 else y
        train, val = train_test_split(np.arange(len(y)), test_size=self.validation_fraction, random_state=seed,
                                      stratify=strata)
        tr_s, va_s = train[s[train]], val[s[val]]

        self.basic_pipe_ = data.preprocessor(roles, roles.basic).fit(x.iloc[train][list(roles.basic)])
        self.full_pipe_ = data.preprocessor(roles, roles.features).fit(x.iloc[tr_s][list(roles.features)])
        xb = self._basic(x)
        xf = self._full(x.iloc[np.flatnonzero(s)])
        xf_rows = np.full(len(y), -1)
        xf_rows[s] = np.arange(s.sum())
        done("preprocessing")

        net = {"hidden": self.hidden, "n_members": self.n_members} if self.teacher == "mlp" else {}
        template = make_teacher(self.teacher, seed, **net)
        self.teacher_ = clone(template).fit(xf[xf_rows[tr_s]], y[tr_s])
        teacher_oof = out_of_fold(template, xf[xf_rows[tr_s]], y[tr_s], np.arange(len(tr_s)), self.n_folds, seed)
        teacher_logit = np.full(len(train), np.nan)
        teacher_logit[s[train]] = teacher_oof
        done("teacher")

        student = NetClassifier(hidden=self.hidden, n_members=self.n_members, distill_lambda=self.distill_lambda,
                                temperature=self.temperature, random_state=seed)
        self.student_ = clone(student).fit(xb[train], y[train], teacher_logit=teacher_logit)
        done("student")

        self.teacher_cal_ = Calibrator(self.calibration).fit(self._teacher_logit(xf[xf_rows[va_s]]), y[va_s])
        self.student_cal_ = Calibrator(self.calibration).fit(self.student_.decision_function(xb[val]), y[val])
        done("calibration")

        student_oof = out_of_fold(student, xb[train], y[train], np.flatnonzero(s[train]), self.n_folds, seed,
                                  teacher_logit=teacher_logit)
        target = inspection_value(self.student_cal_.transform(student_oof), self.teacher_cal_.transform(teacher_oof),
                                  y[tr_s], self.cost)
        self.value_model_ = NetRegressor(random_state=seed).fit(xb[tr_s], target)
        done("routing model")

        self.rules_ = make_rules(self.cost.threshold, seed)
        val_out = self.outputs(frame.iloc[val])
        self.validation_scores_ = {name: np.sort(score) for name, score in val_out.routing.items()}
        sampled_val = np.flatnonzero(s[val])
        self.best_budget_ = {name: self._cheapest_ratio(y[va_s], val_out, name, sampled_val)
                             for name in self.rules_}
        done("routing thresholds")
        return self

    def _cheapest_ratio(self, y, out: Outputs, rule: str, rows: np.ndarray) -> float:
        """The share of products to inspect that minimises the realised cost on ``rows`` (products with
        advanced results), when ``rule`` picks them."""
        p_s, p_t, rank = out.fault_score[rows], out.teacher_score[rows], ranks(out.routing[rule][rows])
        costs = []
        for ratio in RATIO_GRID:
            routed = rank < batch_count(len(rows), fraction=ratio)
            costs.append(self.cost.per_product(y, np.where(routed, p_t, p_s), routed))
        return float(RATIO_GRID[int(np.argmin(costs))])

    def _basic(self, x: pd.DataFrame) -> np.ndarray:
        return self.basic_pipe_.transform(x[list(self.roles.basic)]).astype(np.float32)

    def _full(self, x: pd.DataFrame) -> np.ndarray:
        return self.full_pipe_.transform(x[list(self.roles.features)]).astype(np.float32)

    def _teacher_members(self, xf: np.ndarray) -> np.ndarray:
        if isinstance(self.teacher_, NetClassifier):
            return self.teacher_.member_outputs(xf)
        return self.teacher_.decision_function(xf)[:, None]

    def _teacher_logit(self, xf: np.ndarray, runner=None) -> np.ndarray:
        return logit_of(expit((runner or self._teacher_members)(xf)).mean(axis=1))

    def runners(self) -> dict:
        """The networks as functions of preprocessed float32 matrices, in PyTorch / scikit-learn; a
        ``Router`` with the ONNX backend swaps in ONNX Runtime sessions with the same outputs."""
        return {"student": self.student_.member_outputs, "teacher": self._teacher_members,
                "router": self.value_model_.member_outputs}

    def outputs(self, frame: pd.DataFrame, runners: dict | None = None, rules: dict | None = None) -> Outputs:
        """Scores for a table of products: basic columns required; advanced columns optional (all or
        none), used where present. ``runners`` / ``rules`` replace the fitted networks / rules."""
        roles, run = self.roles, runners or self.runners()
        data.check_columns(frame, roles.basic)
        present = [c for c in roles.advanced if c in frame.columns]
        if present and len(present) < len(roles.advanced):
            absent = [c for c in roles.advanced if c not in frame.columns]
            raise InputError(f"{frame.attrs.get('source', 'table')}: advanced column(s) {absent} are missing; "
                             "give all advanced columns or none")
        x = data.features(frame, roles, roles.basic + tuple(present))
        data.check_rows_observed(x, roles.basic, "basic")
        xb = self._basic(x)
        member_proba = expit(run["student"](xb))
        batch = Batch(fault_score=self.student_cal_.transform(logit_of(member_proba.mean(axis=1))),
                      member_proba=member_proba, value=self.value_model_.combine(run["router"](xb)))
        teacher_score = np.full(len(x), np.nan)
        if present:
            has = data.sampled(x, roles)
            if has.any():
                logit = self._teacher_logit(self._full(x.iloc[np.flatnonzero(has)]), run["teacher"])
                teacher_score[has] = self.teacher_cal_.transform(logit)
        return Outputs(batch=batch, routing={n: r.score(batch) for n, r in (rules or self.rules_).items()},
                       teacher_score=teacher_score)
