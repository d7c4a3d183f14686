"""Logit -> calibrated probability. Fitted with scikit-learn, applied from its learned numbers alone
(Platt: a coefficient and an intercept; isotonic: the step function's knots), so the in-memory model and
a model loaded from its folder compute the same probabilities with the same code."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from fabguard.errors import InputError, ModelFileError
from fabguard.params import Estimator, Options


class Calibrator(Estimator):
    """``platt`` (logistic regression on the logit) or ``isotonic``, fitted on validation data.
    Calibration makes teacher and student probabilities comparable, so a prediction that mixes them
    (routed products take the teacher's) ranks products consistently."""

    _parameter_constraints = {"method": [Options(("platt", "isotonic"))]}

    def __init__(self, method: str = "platt"):
        self.method = method

    def fit(self, logit, y):
        self._validate_params()
        logit, y = np.asarray(logit, dtype=np.float64), np.asarray(y)
        if len(np.unique(y)) < 2:
            raise InputError(f"calibration data ({len(y)} products) hold a single class; need faulty and good")
        if self.method == "platt":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=1e4).fit(logit[:, None], y)
            self.coef_, self.intercept_ = float(model.coef_[0, 0]), float(model.intercept_[0])
        else:
            from sklearn.isotonic import IsotonicRegression

            model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(logit, y)
            self.x_, self.y_ = model.X_thresholds_.astype(np.float64), model.y_thresholds_.astype(np.float64)
        return self

    def transform(self, logit) -> np.ndarray:
        logit = np.asarray(logit, dtype=np.float64)
        if self.method == "platt":
            return expit(self.coef_ * logit + self.intercept_)
        return np.interp(logit, self.x_, self.y_)  # constant beyond the end knots, as out_of_bounds="clip"

    def to_data(self) -> tuple[dict, dict]:
        if self.method == "platt":
            return {"method": "platt", "coef": self.coef_, "intercept": self.intercept_}, {}
        return {"method": "isotonic"}, {"x": self.x_, "y": self.y_}

    @classmethod
    def from_data(cls, spec: dict, arrays: dict) -> "Calibrator":
        cal = cls(spec["method"])
        if cal.method == "platt":
            cal.coef_, cal.intercept_ = float(spec["coef"]), float(spec["intercept"])
            if not np.isfinite([cal.coef_, cal.intercept_]).all():
                raise ModelFileError("Platt calibration parameters are not finite")
        elif cal.method == "isotonic":
            cal.x_, cal.y_ = np.asarray(arrays["x"], np.float64), np.asarray(arrays["y"], np.float64)
            if (cal.x_.ndim != 1 or cal.x_.shape != cal.y_.shape or len(cal.x_) < 1 or np.any(np.diff(cal.x_) < 0)
                    or not np.all((cal.y_ >= 0) & (cal.y_ <= 1))):
                raise ModelFileError("isotonic calibration knots are not an increasing step function into [0, 1]")
        else:
            raise ModelFileError(f"calibration method {cal.method!r} is not 'platt' or 'isotonic'")
        return cal
