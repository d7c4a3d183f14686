"""Saving a fitted ActiveInspector: the whole system (preprocessing, calibration, thresholds, models) as a
pickle, and the student, teacher and routing networks as ONNX graphs checked against PyTorch.

Each ONNX graph maps preprocessed float32 features ``(batch, n)`` to the ensemble members' raw outputs
``(batch, members)`` (logits; the routing model outputs its predicted value of inspection). The
``Router`` applies the saved preprocessing before and the calibration after, identically for both
backends. A gradient-boosting teacher has no ONNX graph here (that would need skl2onnx).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from fabguard.errors import InputError
from fabguard.onnx_export import OPSET, quiet_exporter
from fabguard.outputs import atomic_path

FORMAT = "fabguard-active/1"


def networks(inspector) -> dict:
    """The exportable networks: name -> (torch module, input width)."""
    from fabguard.active.models import NetClassifier

    nets = {"student": (inspector.student_.net_, inspector.student_.n_features_in_),
            "router": (inspector.value_model_.net_, inspector.value_model_.n_features_in_)}
    if isinstance(inspector.teacher_, NetClassifier):
        nets["teacher"] = (inspector.teacher_.net_, inspector.teacher_.n_features_in_)
    return nets


def export_network(module, n_features: int, path: Path) -> None:
    """ONNX graph of ``module`` with a dynamic batch dimension (opset 18, weights inside the file)."""
    import torch

    batch = torch.export.Dim("batch")
    with quiet_exporter(), atomic_path(path) as tmp:
        torch.onnx.export(module.eval(), (torch.zeros(4, n_features),), str(tmp), input_names=["features"],
                          output_names=["members"], dynamic_shapes=({0: batch},), opset_version=OPSET,
                          external_data=False, dynamo=True, verbose=False)


def onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: Path):
    """A function ``float32 matrix -> float64 member outputs`` backed by ONNX Runtime."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float64)


def parity(module, path: Path, x: np.ndarray) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs on ``x``."""
    import torch

    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    return float(np.max(np.abs(onnx_runner(path)(x) - expected)))


def save(inspector, directory, seed: int = 0) -> dict:
    """Write ``inspector.pkl``, ``<network>.onnx`` and ``manifest.json`` (last: its presence marks a
    complete model) into ``directory``; return the manifest. Parity with PyTorch is measured on 1000
    seeded standard-normal rows (the scale of the standardised features) and recorded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "inspector.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(inspector))
    rng = np.random.default_rng(seed)
    exported = {}
    for name, (module, width) in networks(inspector).items():
        path = directory / f"{name}.onnx"
        export_network(module, width, path)
        x = rng.normal(size=(1000, width)).astype(np.float32)
        exported[name] = {"file": path.name, "inputs": int(width), "max_abs_diff_vs_torch": parity(module, path, x)}
    manifest = {"format": FORMAT, "opset": OPSET, "roles": inspector.roles.to_dict(), "rule": inspector.rule,
                "teacher": inspector.teacher, "distill_lambda": inspector.distill_lambda,
                "temperature": inspector.temperature, "calibration": inspector.calibration,
                "cost": vars(inspector.cost), "best_budget": inspector.best_budget_, "onnx": exported}
    with atomic_path(directory / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def load(directory):
    """(inspector, manifest) from a directory written by ``save``. Unpickling runs code from the file:
    load only models you trust."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{directory}: not a saved active-inspection model (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise InputError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    inspector = pickle.loads((directory / "inspector.pkl").read_bytes())
    return inspector, manifest
