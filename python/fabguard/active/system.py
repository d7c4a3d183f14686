"""What a fitted active-inspection model scores and routes with, apart from its networks: roles,
preprocessing, calibration, rules, validation routing scores and budgets. It is plain data (numpy,
pandas), shared by the trainable :class:`~fabguard.active.estimator.ActiveInspector` (networks in
PyTorch / scikit-learn) and the :class:`~fabguard.active.router.Router` (the same networks as ONNX
graphs), so both compute every score with the same code."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.special import expit

from fabguard.active import data
from fabguard.active.calibration import Calibrator
from fabguard.active.preprocessing import Preprocessor
from fabguard.active.routing import Batch, CostModel, Rule
from fabguard.errors import InputError

NETWORKS = ("student", "teacher", "router")


def logit_of(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


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


@dataclasses.dataclass
class System:
    """``runners`` (arguments of :meth:`outputs`) map each of ``NETWORKS`` to a function from a float32
    matrix of preprocessed features to the ensemble members' raw outputs ``(n, members)``: logits for
    student and teacher; for the router, predicted values of inspection, target-major with
    ``value_members`` members per target."""

    roles: data.Roles
    basic: Preprocessor
    full: Preprocessor
    student_cal: Calibrator
    teacher_cal: Calibrator
    value_members: int
    cost: CostModel
    rule: str
    budget: float | None
    rules: dict[str, Rule]
    validation_scores: dict[str, np.ndarray]
    best_budget: dict[str, float]

    def outputs(self, frame: pd.DataFrame, runners: dict[str, Callable], rules: dict | None = None) -> Outputs:
        """Scores for a table of products: basic columns required; advanced columns optional (all or
        none), used where present. ``rules`` replace the fitted rules."""
        roles = self.roles
        if len(frame) == 0:
            raise InputError(f"{frame.attrs.get('source', 'table')}: no products (the table has no rows)")
        data.check_columns(frame, roles.basic)
        present = [c for c in roles.advanced if c in frame.columns]
        if present and len(present) < len(roles.advanced):
            absent = [c for c in roles.advanced if c not in frame.columns]
            raise InputError(f"{frame.attrs.get('source', 'table')}: advanced column(s) {absent} are missing; "
                             "give all advanced columns or none")
        x = data.features(frame, roles, roles.basic + tuple(present))
        data.check_rows_observed(x, roles.basic, "basic")
        xb = self.basic.transform(x)
        member_proba = expit(runners["student"](xb))
        value = runners["router"](xb)
        batch = Batch(fault_score=self.student_cal.transform(logit_of(member_proba.mean(axis=1))),
                      member_proba=member_proba,
                      value=value.reshape(len(value), -1, self.value_members).mean(axis=2))
        teacher_score = np.full(len(x), np.nan)
        if present:
            has = data.sampled(x, roles)
            if has.any():
                rows = np.flatnonzero(has)
                xf = self.full.transform(x.iloc[rows], rows)
                teacher_score[has] = self.teacher_cal.transform(teacher_logit(runners["teacher"](xf)))
        return Outputs(batch=batch, routing={n: r.score(batch) for n, r in (rules or self.rules).items()},
                       teacher_score=teacher_score)


def teacher_logit(members: np.ndarray) -> np.ndarray:
    """The teacher's logit from its members' logits: the logit of their mean probability."""
    return logit_of(expit(members).mean(axis=1))
