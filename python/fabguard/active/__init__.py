"""Active inspection with knowledge distillation: fault prediction from basic inspections on every
product and advanced inspections on a routed few.

The teacher sees basic + advanced results, the student basic results only and is distilled from the
teacher; a routing rule decides which products get the advanced inspection. ``estimator`` trains
(PyTorch, scikit-learn); ``router`` serves a saved model folder (numpy, pandas, ONNX Runtime). Names are
imported on first use, so ``import fabguard.active`` does not load PyTorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Roles": "data", "read_table": "data", "load_ai4i2020": "data", "load_secom": "data",
    "mask_unsampled": "data", "Preprocessor": "preprocessing",
    "simulate_inspections": "simulate", "REGIMES": "simulate",
    "NetClassifier": "models", "NetRegressor": "models", "distillation_loss": "models",
    "make_teacher": "models", "out_of_fold": "models", "Calibrator": "calibration",
    "CostModel": "routing", "Rule": "routing", "RandomRule": "routing", "MarginRule": "routing",
    "SpreadRule": "routing", "ValueRule": "routing", "ValueChangeRule": "routing", "ValueBrierRule": "routing",
    "ValueCostRule": "routing", "make_rules": "routing", "inspection_value": "routing", "batch_count": "routing",
    "select_top": "routing", "stream_threshold": "routing", "stream_fraction": "routing", "ranks": "routing",
    "ActiveInspector": "estimator", "System": "system", "Outputs": "system",
    "evaluate_routing": "evaluate", "write_results": "evaluate",
    "save": "export", "load": "export",
    "Router": "router",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fabguard.active' has no attribute {name!r}")
    module = importlib.import_module(f"fabguard.active.{_EXPORTS[name]}")
    return getattr(module, name)
