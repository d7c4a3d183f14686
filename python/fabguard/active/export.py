"""An active-inspection model folder: data only, written whole, checked whole on loading.

A folder holds ``manifest.json`` (roles, parameters, cost, rules and their parameters, best budgets,
calibration, preprocessing columns and categories, the ONNX graphs' parity figures, and the sha256 of
every other part), ``arrays.npz`` (preprocessing statistics, isotonic knots, validation routing scores;
read with ``allow_pickle=False``) and three ONNX graphs (``student``, ``teacher``, ``router``: preprocessed
float32 features ``(batch, n)`` -> the ensemble members' raw outputs ``(batch, members)``). Nothing in it is
code: loading parses JSON, arrays and graphs, so a crafted folder can be refused but never run. A pickle
in the folder is refused outright. The folder is written through :func:`fabguard.outputs.atomic_dir`, so
an interrupted save leaves the earlier model whole, and loading checks every part's hash, so parts of two
models never mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from fabguard import registry
from fabguard.active.calibration import Calibrator
from fabguard.active.data import Roles
from fabguard.active.limits import MAX_MEMBERS
from fabguard.active.preprocessing import Preprocessor
from fabguard.active.routing import CostModel
from fabguard.active.system import NETWORKS, System
from fabguard.errors import InputError, InvalidParameterError, ModelFileError
from fabguard.outputs import atomic_dir, atomic_path
from fabguard.runtime.metadata import attach
from fabguard.runtime.parity import float32_bound, max_abs_diff

FORMAT = "fabguard-active/2"
ARTIFACT = "active-network"
ARRAYS = "arrays.npz"
MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".pt", ".pth")
PARITY_ROWS = 1000


def networks(inspector) -> dict:
    """name -> (fitted model, input width, reference function float32 matrix -> member outputs)."""
    return {"student": (inspector.student_, inspector.system_.basic.n_outputs, inspector.student_.member_outputs),
            "teacher": (inspector.teacher_, inspector.system_.full.n_outputs, inspector._teacher_members),
            "router": (inspector.value_model_, inspector.system_.basic.n_outputs,
                       inspector.value_model_.member_outputs)}


def mlp_bound(ensemble, x: np.ndarray) -> float:
    """Largest difference float32 arithmetic in two summation orders (PyTorch vs ONNX Runtime) can make
    in the outputs of the MLP ``ensemble`` on rows ``x``. Per linear layer, each output is a sum of
    fan-in + 1 terms (products and the bias) whose absolute sum is at most ``scale = max sum|w||a| + |b|``
    over the rows, computed from the actual weights and activations: :func:`float32_bound(scale, fan-in + 1)`.
    An error ``e`` already in a layer's input grows to at most ``max_j sum_i |w_ji| * e`` (ReLU is
    1-Lipschitz, dropout the identity at inference); the output scaling adds its own rounding."""
    worst = 0.0
    out_scale = np.asarray(ensemble.scale.detach().cpu().numpy(), np.float64) * np.ones(len(ensemble.members))
    shift = np.asarray(ensemble.shift.detach().cpu().numpy(), np.float64) * np.ones(len(ensemble.members))
    for k, member in enumerate(ensemble.members):
        a, err = np.asarray(x, np.float64), 0.0
        for layer in member:
            if hasattr(layer, "weight"):
                w = layer.weight.detach().cpu().numpy().astype(np.float64)
                b = layer.bias.detach().cpu().numpy().astype(np.float64)
                scale = float((np.abs(a) @ np.abs(w).T + np.abs(b)).max())
                err = float(np.abs(w).sum(axis=1).max()) * err + float32_bound(scale, w.shape[1] + 1)
                a = a @ w.T + b
            elif type(layer).__name__ == "ReLU":
                a = np.maximum(a, 0)
        out = np.abs(a[:, 0] * out_scale[k]).max() + abs(shift[k])
        worst = max(worst, abs(out_scale[k]) * err + float32_bound(out, 2))  # multiply, then add the shift
    return worst


def tree_bound(model) -> float:
    """The same for a gradient-boosting teacher: both sides reach the same leaves (see
    :mod:`fabguard.active.trees`); the sum of one leaf per tree plus the baseline has trees + 1 terms, at
    most the largest leaf of each tree in size."""
    scale = abs(float(np.ravel(model._baseline_prediction)[0]))
    scale += sum(float(np.abs(p.nodes["value"][p.nodes["is_leaf"] == 1]).max()) for (p,) in model._predictors)
    return float32_bound(scale, len(model._predictors) + 1)


def _write_graph(model, width: int, path: Path, metadata: dict) -> None:
    from fabguard.active.models import NetClassifier, NetRegressor

    if isinstance(model, (NetClassifier, NetRegressor)):
        import torch

        from fabguard.runtime.export import export_module

        export_module(model.net_, torch.zeros(4, width), path, "features", ["members"], metadata)
        return
    import onnx

    from fabguard.active.trees import tree_graph

    proto = tree_graph(model, width)
    attach(proto, metadata)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, os.fspath(tmp))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(directory) -> None:
    """Refuse, before training, an output folder that holds anything but the parts of a model (of this
    format or the earlier pickle one): saving replaces the folder whole, which must never delete a user's
    other files (``--out .``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    parts = {MANIFEST, ARRAYS, "inspector.pkl", *(f"{name}.onnx" for name in NETWORKS)}
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in parts and not p.name.endswith(".trt_cache"))
    if foreign:
        raise InputError(f"model folder {directory}: holds {foreign[0]!r}, which is not part of an active-inspection "
                         "model; a model folder is replaced whole, so give a new or empty folder")


def save(inspector, directory, seed: int = 0) -> dict:
    """Write the fitted ``inspector`` as a model folder ``directory`` (replacing an earlier one whole, or
    leaving it untouched on any error or Ctrl-C); return the manifest. ONNX Runtime is checked against
    PyTorch / scikit-learn on ``PARITY_ROWS`` seeded standard-normal rows (the scale of standardised
    features); the largest difference and its float32 bound are recorded."""
    from fabguard.runtime.session import create_session

    check_replaceable(directory)
    system, model_id = inspector.system_, uuid.uuid4().hex
    rng = np.random.default_rng(seed)
    commit = _CommitPoint()
    with commit, atomic_dir(directory) as tmp:
        graphs = {}
        for name, (model, width, reference) in networks(inspector).items():
            path = tmp / f"{name}.onnx"
            _write_graph(model, width, path, {"artifact": ARTIFACT, "network": name, "model": model_id,
                                              "inputs": int(width)})
            x = rng.normal(size=(PARITY_ROWS, width)).astype(np.float32)
            session = create_session(path, ["CPUExecutionProvider"], threads=1)
            got = session.run(None, {"features": x})[0]
            bound = mlp_bound(model.net_, x) if hasattr(model, "net_") else tree_bound(model)
            graphs[name] = {"file": path.name, "inputs": int(width), "outputs": int(got.shape[1]),
                            "max_abs_diff_vs_reference": max_abs_diff(got, reference(x)), "float32_bound": bound}
        arrays, preprocessing, calibration = {}, {}, {}
        for part, pre in (("basic", system.basic), ("full", system.full)):
            preprocessing[part], values = pre.to_data()
            arrays.update({f"{part}.{k}": v for k, v in values.items()})
        for part, cal in (("student", system.student_cal), ("teacher", system.teacher_cal)):
            calibration[part], values = cal.to_data()
            arrays.update({f"{part}_cal.{k}": v for k, v in values.items()})
        arrays.update({f"validation_scores.{k}": v for k, v in system.validation_scores.items()})
        with open(tmp / ARRAYS, "wb") as handle:
            np.savez(handle, **arrays)
        manifest = {
            "format": FORMAT, "model": model_id, "roles": system.roles.to_dict(),
            "params": {k: v for k, v in inspector.get_params(deep=False).items() if k not in ("roles", "cost")},
            "cost": vars(system.cost), "rule": system.rule, "budget": system.budget,
            "rules": {name: rule.get_params(deep=False) for name, rule in system.rules.items()},
            "best_budget": system.best_budget, "value_members": system.value_members,
            "preprocessing": preprocessing, "calibration": calibration, "graphs": graphs,
            "sha256": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
        commit.reached()  # the new folder is complete: from here the swap runs to its end
    return manifest


class _CommitPoint:
    """Ctrl-C and a save's commit point. Until :meth:`reached`, Ctrl-C raises ``KeyboardInterrupt`` as
    usual, which abandons the new folder and leaves the earlier model untouched. From then until the
    block ends (the swap of the two folders and the removal of the old one: milliseconds), a Ctrl-C is
    held back and then dropped, because the new model is already whole: an interrupted ``train`` thus
    always exits with the old model in place, and a finished one with the new. Only in the main thread,
    where Python delivers signals, and only while a Python handler (``KeyboardInterrupt``) is set."""

    def __init__(self):
        self.previous = None
        self.held = False

    def __enter__(self):
        return self

    def reached(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        if not callable(signal.getsignal(signal.SIGINT)):  # ignored, or the default (the process ends)
            return

        def hold(signum, frame):
            self.held = True

        self.previous = signal.signal(signal.SIGINT, hold)

    def __exit__(self, *exc):
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        return False


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


PARTS = (ARRAYS, *(f"{name}.onnx" for name in NETWORKS))
MANIFEST_KEYS = ("format", "model", "roles", "params", "cost", "rule", "budget", "rules", "best_budget",
                 "value_members", "preprocessing", "calibration", "graphs", "sha256")
GRAPH_KEYS = ("file", "inputs", "outputs", "max_abs_diff_vs_reference", "float32_bound")
PREPROCESSING_KEYS = ("columns", "categorical", "fill", "categories")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_manifest(manifest: dict, path) -> None:
    """Refuse, with the key named, a manifest whose structure or types differ from what :func:`save`
    writes: every key present (and no other at the top level), column names lists of strings, numbers
    finite and in range, graph files the plain names ``student.onnx`` ... inside the folder, one sha256
    per part, and preprocessing columns that match the roles. Values that need the arrays or the rule
    registry are checked when the system is built."""

    def fail(key: str, expected: str, value) -> None:
        raise ModelFileError(f"{path}: {key} must be {expected}, got {_shown(value)}")

    def obj(key: str, value, keys=None) -> dict:
        if not isinstance(value, dict):
            fail(key, "an object" if keys is None else f"an object with the keys {list(keys)}", value)
        if keys is not None and set(value) != set(keys):
            missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
            raise ModelFileError(f"{path}: {key} must have exactly the keys {list(keys)}"
                                 + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        return value

    def text(key: str, value) -> str:
        if not isinstance(value, str) or not value:
            fail(key, "a non-empty string", value)
        return value

    def strings(key: str, value, allow_empty: bool = False) -> list:
        if not isinstance(value, list) or not all(isinstance(v, str) and (v or allow_empty) for v in value):
            fail(key, "a list of " + ("strings" if allow_empty else "column names (non-empty strings)"), value)
        return value

    def number(key: str, value, low: float | None = None, high: float | None = None) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        try:
            ok = ok and math.isfinite(float(value))
        except OverflowError:  # an integer beyond float range
            ok = False
        if not ok or (low is not None and value < low) or (high is not None and value > high):
            where = f" in [{low}, {'inf' if high is None else high}]" if low is not None else ""
            fail(key, f"a finite number{where}", value)
        return value

    def integer(key: str, value, low: int = 1, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            fail(key, f"an integer in [{low}, {'inf' if high is None else high}]", value)
        return value

    def finite(key: str, value) -> None:  # no NaN / Infinity anywhere (JSON as Python writes it allows them)
        stack = [(key, value)]
        while stack:  # iterative: a crafted manifest may nest as deep as the JSON parser allows
            key, value = stack.pop()
            if isinstance(value, float) and not math.isfinite(value):
                fail(key, "a finite number", value)
            if isinstance(value, dict):
                stack += [(f"{key}.{k}", v) for k, v in value.items()]
            elif isinstance(value, list):
                stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]

    obj("the manifest", manifest, MANIFEST_KEYS)
    for key in MANIFEST_KEYS:
        finite(key, manifest[key])
    text("model", manifest["model"])
    roles = obj("roles", manifest["roles"], ("label", "basic", "advanced", "categorical", "time"))
    text("roles.label", roles["label"])
    for key in ("basic", "advanced", "categorical"):
        strings(f"roles.{key}", roles[key])
    if roles["time"] is not None:
        text("roles.time", roles["time"])
    try:
        Roles.from_dict(roles)
    except InputError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    obj("params", manifest["params"])
    cost = obj("cost", manifest["cost"], ("basic", "advanced", "miss", "false_alarm"))
    for key, value in cost.items():
        number(f"cost.{key}", value, 0)
    text("rule", manifest["rule"])
    if manifest["budget"] is not None:
        number("budget", manifest["budget"], 0, 1)
    for name, params in obj("rules", manifest["rules"]).items():
        obj(f"rules.{name}", params)
    for name, value in obj("best_budget", manifest["best_budget"]).items():
        number(f"best_budget.{name}", value, 0, 1)
    integer("value_members", manifest["value_members"], 1, MAX_MEMBERS)
    preprocessing = obj("preprocessing", manifest["preprocessing"], ("basic", "full"))
    expected = {"basic": roles["basic"], "full": roles["basic"] + roles["advanced"]}
    for part, columns in expected.items():
        spec = obj(f"preprocessing.{part}", preprocessing[part], PREPROCESSING_KEYS)
        if strings(f"preprocessing.{part}.columns", spec["columns"]) != columns:
            fail(f"preprocessing.{part}.columns", f"the roles' columns {columns}", spec["columns"])
        if strings(f"preprocessing.{part}.categorical", spec["categorical"]) != roles["categorical"]:
            fail(f"preprocessing.{part}.categorical", f"roles.categorical {roles['categorical']}", spec["categorical"])
        strings(f"preprocessing.{part}.fill", spec["fill"], allow_empty=True)
        if not isinstance(spec["categories"], list):
            fail(f"preprocessing.{part}.categories", "a list of lists of strings", spec["categories"])
        for i, values in enumerate(spec["categories"]):
            strings(f"preprocessing.{part}.categories[{i}]", values, allow_empty=True)
    calibration = obj("calibration", manifest["calibration"], ("student", "teacher"))
    for part in ("student", "teacher"):
        spec = obj(f"calibration.{part}", calibration[part])
        method = spec.get("method")
        if method == "platt":
            obj(f"calibration.{part}", spec, ("method", "coef", "intercept"))
            number(f"calibration.{part}.coef", spec["coef"])
            number(f"calibration.{part}.intercept", spec["intercept"])
        elif method == "isotonic":
            obj(f"calibration.{part}", spec, ("method",))
        else:
            fail(f"calibration.{part}.method", "'platt' or 'isotonic'", method)
    graphs = obj("graphs", manifest["graphs"], NETWORKS)
    for name in NETWORKS:
        graph = obj(f"graphs.{name}", graphs[name], GRAPH_KEYS)
        if graph["file"] != f"{name}.onnx":
            fail(f"graphs.{name}.file", f"{name + '.onnx'!r} (the plain file name inside the model folder)",
                 graph["file"])
        integer(f"graphs.{name}.inputs", graph["inputs"])
        integer(f"graphs.{name}.outputs", graph["outputs"])
        number(f"graphs.{name}.max_abs_diff_vs_reference", graph["max_abs_diff_vs_reference"], 0)
        number(f"graphs.{name}.float32_bound", graph["float32_bound"], 0)
    hashes = obj("sha256", manifest["sha256"], PARTS)
    for name, digest in hashes.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            fail(f"sha256.{name}", "64 lower-case hex digits", digest)


def read_manifest(directory) -> tuple[Path, dict]:
    """(folder, manifest) of a model folder whose parts are all present and unchanged since saving."""
    if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
        raise InvalidParameterError(f"model folder: expected a path (str or os.PathLike), got "
                                    f"{type(directory).__name__} {directory!r:.80}")
    directory = Path(directory)
    if not directory.exists():
        raise ModelFileError(f"{directory}: no such model folder")
    if not directory.is_dir():
        raise ModelFileError(f"{directory}: not a folder; an active-inspection model is a folder")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFileError(f"{directory / pickles[0]}: a pickle in the model folder; fabguard never loads "
                             "pickles (unpickling can run any code). Models are JSON, .npz arrays and ONNX graphs: "
                             "retrain the model with this version of fabguard")
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"{directory}: not a saved active-inspection model (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ModelFileError(f"{path}: nested too deeply to be a model description; the file is damaged") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFileError(f"{path}: format {found!r}, expected {FORMAT!r}")
    check_manifest(manifest, path)
    hashes = manifest["sha256"]
    for name in sorted(hashes):
        part = directory / name
        if not part.is_file():
            raise ModelFileError(f"{part}: part missing from the model folder")
        if _sha256(part) != hashes[name]:
            raise ModelFileError(f"{part}: content differs from the manifest's sha256: the file is damaged, "
                                 "truncated or from another model")
    return directory, manifest


def load(directory) -> tuple[System, dict]:
    """(system, manifest) from a model folder written by :func:`save`; the graphs are opened by the
    :class:`~fabguard.active.router.Router`. Any inconsistency raises :class:`ModelFileError`."""
    directory, manifest = read_manifest(directory)
    try:
        with np.load(directory / ARRAYS, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{directory / ARRAYS}: not readable as plain arrays ({exc})") from None
    try:
        return _system(manifest, arrays), manifest
    except ModelFileError as exc:
        raise ModelFileError(f"{directory / MANIFEST}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{directory / MANIFEST}: invalid model description ({type(exc).__name__}: "
                             f"{exc})") from None


def _part(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def _system(manifest: dict, arrays: dict) -> System:
    roles = Roles.from_dict(manifest["roles"])
    rules = {}
    for name, params in manifest["rules"].items():
        try:
            rules[name] = registry.get("routing_rule", name)(**params)
        except InputError as exc:
            raise ModelFileError(str(exc)) from None
        rules[name]._validate_params()
    scores = _part(arrays, "validation_scores")
    best = {k: float(v) for k, v in manifest["best_budget"].items()}
    if set(scores) != set(rules) or set(best) != set(rules) or manifest["rule"] not in rules:
        raise ModelFileError("rules, validation scores and best budgets do not name the same rules")
    for name, values in scores.items():
        if values.ndim != 1 or len(values) == 0 or values.dtype.kind != "f":
            raise ModelFileError(f"validation scores of rule {name!r} are not a non-empty float vector")
        if not 0 <= best[name] <= 1:
            raise ModelFileError(f"best budget of rule {name!r} is {best[name]}, not in [0, 1]")
    budget = manifest["budget"]
    if budget is not None and not (isinstance(budget, (int, float)) and 0 <= budget <= 1):
        raise ModelFileError(f"budget {budget!r} is not a fraction in [0, 1]")
    value_members = manifest["value_members"]
    if not isinstance(value_members, int) or value_members < 1:
        raise ModelFileError(f"value_members {value_members!r} is not a positive integer")
    return System(roles=roles,
                  basic=Preprocessor.from_data(manifest["preprocessing"]["basic"], _part(arrays, "basic")),
                  full=Preprocessor.from_data(manifest["preprocessing"]["full"], _part(arrays, "full")),
                  student_cal=Calibrator.from_data(manifest["calibration"]["student"], _part(arrays, "student_cal")),
                  teacher_cal=Calibrator.from_data(manifest["calibration"]["teacher"], _part(arrays, "teacher_cal")),
                  value_members=value_members, cost=CostModel(**manifest["cost"]), rule=manifest["rule"],
                  budget=budget, rules=rules, validation_scores=scores, best_budget=best)
