"""Runtime: route products to the advanced inspection and score them, from a saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fabguard.active import export
from fabguard.active.routing import RandomRule, batch_count, select_top, stream_fraction, stream_threshold
from fabguard.errors import InputError


class Router:
    """Scores numpy / pandas batches with a fitted ``ActiveInspector``.

    ``backend="onnx"`` runs the student, teacher and routing networks in ONNX Runtime (from a directory
    written by ``export.save``); ``"torch"`` runs them in PyTorch / scikit-learn. Preprocessing and
    calibration are the inspector's own in both cases. ``seed`` reseeds the random routing rule (None:
    the one fitted with the model).
    """

    def __init__(self, inspector, backend: str = "torch", directory: str | Path | None = None,
                 seed: int | None = None):
        self.inspector = inspector
        self.backend = backend
        self.rules = dict(inspector.rules_) if seed is None else {**inspector.rules_, "random": RandomRule(seed)}
        if backend == "torch":
            self.runners = inspector.runners()
        elif backend == "onnx":
            if directory is None:
                raise InputError("the ONNX backend needs the directory of a saved model")
            files = {name: Path(directory) / f"{name}.onnx" for name in ("student", "teacher", "router")}
            absent = [str(f) for f in files.values() if not f.is_file()]
            if absent:
                raise InputError(f"{directory}: no ONNX graph {absent}; a gradient-boosting teacher has none "
                                 "(load with backend='torch')")
            self.runners = {name: export.onnx_runner(path) for name, path in files.items()}
        else:
            raise InputError(f"backend {backend!r} is not 'onnx' or 'torch'")

    @classmethod
    def load(cls, directory, backend: str = "onnx", seed: int | None = None) -> "Router":
        inspector, _ = export.load(directory)
        return cls(inspector, backend, directory, seed)

    def _frame(self, products) -> pd.DataFrame:
        """A DataFrame from a DataFrame, or from a 2-D array whose columns are the basic features, or
        the basic then the advanced features, in the order of the model's roles."""
        if isinstance(products, pd.DataFrame):
            return products
        array = np.asarray(products, dtype=object if self.inspector.roles.categorical else float)
        roles = self.inspector.roles
        widths = {len(roles.basic): roles.basic, len(roles.features): roles.features}
        if array.ndim != 2 or array.shape[1] not in widths:
            raise InputError(f"array of shape {array.shape}: expected (n, {len(roles.basic)}) basic or "
                             f"(n, {len(roles.features)}) basic + advanced columns")
        return pd.DataFrame(array, columns=list(widths[array.shape[1]]))

    def route(self, products, budget: float | None = None, money: float | None = None, mode: str = "batch",
              rule: str | None = None) -> pd.DataFrame:
        """Per product: ``decision`` (``inspect`` = send to the advanced inspection, ``accept`` = keep the
        basic prediction), ``fault_score`` (calibrated basic-model probability), ``routing_score`` and
        ``final_score`` (teacher probability where advanced results are given, the basic one for accepted
        products, NaN for products still waiting for their advanced results).

        Batch mode inspects the top ``budget`` share (or as many as ``money`` pays for); streaming mode
        inspects each product whose routing score exceeds the validation threshold for ``budget`` (or for
        ``money`` per product). No budget given: the model's default (cost-minimising on validation data).
        """
        ins = self.inspector
        rule = rule or ins.rule
        if rule not in self.rules:
            raise InputError(f"routing rule {rule!r} is not one of {sorted(self.rules)}")
        if budget is None and money is None:
            budget = ins.budget if ins.budget is not None else ins.best_budget_[rule]
        frame = self._frame(products)
        out = ins.outputs(frame, self.runners, self.rules)
        score = out.routing[rule]
        if mode == "batch":
            routed = select_top(score, batch_count(len(score), budget, money, ins.cost))
        elif mode == "stream":
            routed = score > stream_threshold(ins.validation_scores_[rule], stream_fraction(budget, money, ins.cost))
        else:
            raise InputError(f"mode {mode!r} is not 'batch' or 'stream'")
        has_advanced = ~np.isnan(out.teacher_score)
        final = np.where(has_advanced, out.teacher_score, np.where(routed, np.nan, out.fault_score))
        return pd.DataFrame({"decision": np.where(routed, "inspect", "accept"), "fault_score": out.fault_score,
                             "routing_score": score, "final_score": final}, index=frame.index)

    def final_score(self, products) -> np.ndarray:
        """Teacher probability where the product has advanced results, otherwise the basic probability."""
        out = self.inspector.outputs(self._frame(products), self.runners)
        return np.where(np.isnan(out.teacher_score), out.fault_score, out.teacher_score)
