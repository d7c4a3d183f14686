"""The trainable side of active inspection (PyTorch, scikit-learn): ``ActiveInspector`` fits
preprocessing, teacher, (distilled) student, calibration, routing model and streaming thresholds from one
table where only sampled products have advanced results. Serving a saved model is ``router.Router``.

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

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from fabguard import registry
from fabguard.active import data
from fabguard.active.calibration import Calibrator
from fabguard.active.limits import MEMBERS
from fabguard.active.models import NetClassifier, NetRegressor, make_teacher, out_of_fold
from fabguard.active.preprocessing import Preprocessor
from fabguard.active.routing import CostModel, batch_count, inspection_value, make_rules, ranks
from fabguard.active.system import Outputs, System, teacher_logit
from fabguard.errors import InputError
from fabguard.params import (FRACTION_OPEN, NONE, SEED, Instance, Interval, Options, ValidatedParams,
                             check)

RATIO_GRID = np.round(np.linspace(0, 1, 51), 4)


class ActiveInspector(ValidatedParams, BaseEstimator):
    """Teacher, student and routing for active inspection; see the module docstring for the steps.

    ``rule`` is the routing rule used by default (all rules are fitted, so they can be compared);
    ``budget`` the default share of products to inspect, None = the cost-minimising share found on
    validation data. The fitted state a router needs (preprocessing, calibration, rules, validation
    scores, budgets) is ``system_``; the networks are ``student_``, ``teacher_`` and ``value_model_``.
    """

    _parameter_constraints = {
        "roles": [Instance(data.Roles)], "teacher": [Options(("mlp", "gbm"))],
        "distill_lambda": [Interval(float, 0, 1)], "temperature": [Interval(float, 0, None, "neither")],
        "n_members": [MEMBERS], "hidden": [Instance((tuple, list))],
        "calibration": [Options(("platt", "isotonic"))], "rule": [Instance(str)],
        "budget": [Interval(float, 0, 1), NONE], "cost": [Instance(CostModel)],
        "validation_fraction": [FRACTION_OPEN], "n_folds": [Interval(int, 2, None)], "random_state": [SEED],
    }

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
        self._validate_params()
        registry.get("routing_rule", self.rule)  # an unknown rule is refused with the known ones
        check("frame", frame, Instance(pd.DataFrame), owner="ActiveInspector.fit")
        if len(frame) == 0:
            raise InputError(f"{frame.attrs.get('source', 'table')}: no products (the table has no rows)")
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

        basic = Preprocessor(roles.basic, roles.categorical).fit(x.iloc[train])
        full = Preprocessor(roles.features, roles.categorical).fit(x.iloc[tr_s])
        xb = basic.transform(x)
        xf = full.transform(x.iloc[np.flatnonzero(s)])
        xf_rows = np.full(len(y), -1)
        xf_rows[s] = np.arange(s.sum())
        done("preprocessing")

        net = {"hidden": self.hidden, "n_members": self.n_members} if self.teacher == "mlp" else {}
        template = make_teacher(self.teacher, seed, **net)
        self.teacher_ = clone(template).fit(xf[xf_rows[tr_s]], y[tr_s])
        teacher_oof = out_of_fold(template, xf[xf_rows[tr_s]], y[tr_s], np.arange(len(tr_s)), self.n_folds, seed)
        distill_target = np.full(len(train), np.nan)
        distill_target[s[train]] = teacher_oof
        done("teacher")

        student = NetClassifier(hidden=self.hidden, n_members=self.n_members, distill_lambda=self.distill_lambda,
                                temperature=self.temperature, random_state=seed)
        self.student_ = clone(student).fit(xb[train], y[train], teacher_logit=distill_target)
        done("student")

        teacher_cal = Calibrator(self.calibration).fit(teacher_logit(self._teacher_members(xf[xf_rows[va_s]])),
                                                       y[va_s])
        student_cal = Calibrator(self.calibration).fit(self.student_.decision_function(xb[val]), y[val])
        done("calibration")

        student_oof = out_of_fold(student, xb[train], y[train], np.flatnonzero(s[train]), self.n_folds, seed,
                                  teacher_logit=distill_target)
        target = inspection_value(student_cal.transform(student_oof), teacher_cal.transform(teacher_oof),
                                  y[tr_s], self.cost)
        self.value_model_ = NetRegressor(random_state=seed).fit(xb[tr_s], target)
        done("routing model")

        self.system_ = System(roles=roles, basic=basic, full=full, student_cal=student_cal, teacher_cal=teacher_cal,
                              value_members=self.value_model_.n_members, cost=self.cost, rule=self.rule,
                              budget=self.budget, rules=make_rules(self.cost.threshold, seed), validation_scores={},
                              best_budget={})
        val_out = self.outputs(frame.iloc[val])
        sampled_val = np.flatnonzero(s[val])
        for name, score in val_out.routing.items():
            self.system_.validation_scores[name] = np.sort(score)
            self.system_.best_budget[name] = self._cheapest_ratio(y[va_s], val_out, name, sampled_val)
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

    def _teacher_members(self, xf: np.ndarray) -> np.ndarray:
        if isinstance(self.teacher_, NetClassifier):
            return self.teacher_.member_outputs(xf)
        return self.teacher_.decision_function(xf)[:, None]

    def runners(self) -> dict:
        """The networks as functions of preprocessed float32 matrices, in PyTorch / scikit-learn; a
        ``Router`` loaded from a model folder runs the same networks as ONNX graphs."""
        check_is_fitted(self)
        return {"student": self.student_.member_outputs, "teacher": self._teacher_members,
                "router": self.value_model_.member_outputs}

    def outputs(self, frame: pd.DataFrame, rules: dict | None = None) -> Outputs:
        """Scores for a table of products (see :meth:`System.outputs`); ``rules`` replace the fitted rules."""
        runners = self.runners()  # refuses an unfitted inspector
        return self.system_.outputs(frame, runners, rules)
