"""Runtime: route products to the advanced inspection and score them, from a model folder (ONNX Runtime,
no PyTorch) or from a fitted ``ActiveInspector`` in memory; both use the same preprocessing, calibration
and rules (:class:`~fabguard.active.system.System`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from fabguard.active import export
from fabguard.active.limits import THREADS
from fabguard.active.routing import VALUE_TARGETS, RandomRule, batch_count, select_top, stream_fraction, stream_threshold
from fabguard.active.system import NETWORKS, System
from fabguard.errors import InputError, ModelFileError
from fabguard.params import NONE, SEED, Options, check
from fabguard.runtime.session import Runtime

MAX_BATCH = 4096  # rows per ONNX Runtime call: bounds the memory of one call, not the table size


class Router(Runtime):
    """Scores numpy / pandas batches with a fitted active-inspection system. ``runners`` map each network
    name to a function ``float32 features -> (n, members) float64``. ``seed`` reseeds the random routing
    rule (None: the one fitted with the model)."""

    artifact = export.ARTIFACT
    required = {"network": str, "model": str, "inputs": int}

    def __init__(self, system: System, runners: dict[str, Callable], seed: int | None = None):
        check("seed", seed, SEED, NONE, owner="Router")
        self.system = system
        self.runners = runners
        self.rules = dict(system.rules)
        if seed is not None and "random" in self.rules:
            self.rules["random"] = RandomRule(seed)

    @classmethod
    def from_inspector(cls, inspector, seed: int | None = None) -> "Router":
        """A router over a fitted ``ActiveInspector`` in memory (networks in PyTorch / scikit-learn)."""
        return cls(inspector.system_, inspector.runners(), seed)

    @classmethod
    def load(cls, directory: str | os.PathLike, seed: int | None = None, threads: int | None = 1,
             providers: Sequence[str] | None = None) -> "Router":
        """A router over a model folder written by ``export.save``: every part checked (hashes, metadata,
        widths) before anything is scored. ``threads``: ONNX Runtime intra-op threads per graph, 1 to
        1024, at most one per core is used (small MLPs run best on 1; None: one per core)."""
        check("threads", threads, THREADS, NONE, owner="Router.load")
        if threads is not None:  # threads beyond the cores only cost memory (three pools of them)
            threads = min(threads, os.cpu_count() or 1)
        system, manifest = export.load(directory)
        router = cls(system, {}, seed)
        widths = {"student": system.basic.n_outputs, "router": system.basic.n_outputs,
                  "teacher": system.full.n_outputs}
        for name in NETWORKS:
            path = os.path.join(directory, f"{name}.onnx")
            meta, session = router.open(path, providers, threads, max_batch=MAX_BATCH)
            if meta["network"] != name or meta["model"] != manifest["model"]:
                raise ModelFileError(f"{path}: the {meta['network']!r} graph of model {meta['model']}, expected "
                                     f"the {name!r} graph of model {manifest['model']}")
            shape = [i.shape for i in session.get_inputs()]
            if meta["inputs"] != widths[name] or len(shape) != 1 or len(shape[0]) != 2 or shape[0][1] != widths[name]:
                raise ModelFileError(f"{path}: takes inputs {shape}; the saved preprocessing gives "
                                     f"(batch, {widths[name]})")
            outputs = manifest["graphs"][name].get("outputs") if isinstance(manifest["graphs"][name], dict) else None
            if name == "router":
                outputs = len(VALUE_TARGETS) * system.value_members
            if not isinstance(outputs, int) or outputs < 1:
                raise ModelFileError(f"{path}: the manifest gives no valid output width for this graph")
            router.runners[name] = router._runner(session, path, outputs)
        return router

    def _runner(self, session, path: str, width: int) -> Callable:
        """float32 features -> float64 ``(n, width)`` member outputs; a crafted graph that returns any
        other shape is refused instead of failing somewhere downstream."""

        def run(x: np.ndarray) -> np.ndarray:
            out = self.run(session, x, MAX_BATCH)[0]
            if out.shape != (len(x), width):
                raise ModelFileError(f"{path}: returned outputs of shape {out.shape}, expected {(len(x), width)}")
            return out.astype(np.float64)

        return run

    def _frame(self, products) -> pd.DataFrame:
        """A DataFrame from a DataFrame, or from a 2-D array whose columns are the basic features, or
        the basic then the advanced features, in the order of the model's roles."""
        if isinstance(products, pd.DataFrame):
            return products
        roles = self.system.roles
        try:
            array = np.asarray(products, dtype=object if roles.categorical else float)
        except (TypeError, ValueError) as exc:
            raise InputError(f"products: not a table or a numeric 2-D array ({exc})") from None
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
        system = self.system
        check("mode", mode, Options(("batch", "stream")), owner="Router.route")
        rule = system.rule if rule is None else rule
        if rule not in self.rules:
            raise InputError(f"routing rule {rule!r} is not one of {sorted(self.rules)}")
        if budget is None and money is None:
            budget = system.budget if system.budget is not None else system.best_budget[rule]
        if mode == "batch":
            batch_count(0, budget, money, system.cost)  # refuses a bad budget before scoring
        else:
            threshold = stream_threshold(system.validation_scores[rule], stream_fraction(budget, money, system.cost))
        frame = self._frame(products)
        out = system.outputs(frame, self.runners, self.rules)
        score = out.routing[rule]
        if mode == "batch":
            routed = select_top(score, batch_count(len(score), budget, money, system.cost))
        else:
            routed = score > threshold
        has_advanced = ~np.isnan(out.teacher_score)
        final = np.where(has_advanced, out.teacher_score, np.where(routed, np.nan, out.fault_score))
        return pd.DataFrame({"decision": np.where(routed, "inspect", "accept"), "fault_score": out.fault_score,
                             "routing_score": score, "final_score": final}, index=frame.index)

    def final_score(self, products) -> np.ndarray:
        """Teacher probability where the product has advanced results, otherwise the basic probability."""
        out = self.system.outputs(self._frame(products), self.runners, self.rules)
        return np.where(np.isnan(out.teacher_score), out.fault_score, out.teacher_score)
