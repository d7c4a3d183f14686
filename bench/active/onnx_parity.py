"""ONNX Runtime vs PyTorch / scikit-learn on a real table: a system is fitted, saved as a model folder and
loaded again; per rule, the largest absolute difference of every Router output between the loaded folder
and the in-memory system, whether the routing decisions are identical, and scoring time per product.

    python bench/active/onnx_parity.py ../shared/data/ai4i2020
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from fabguard.active import data, export
from fabguard.active.estimator import ActiveInspector
from fabguard.active.router import Router
from fabguard.outputs import atomic_path

ROOT = Path(__file__).resolve().parents[2]


def timed(router: Router, frame, rule: str):
    start = time.perf_counter()
    result = router.route(frame, budget=0.2, rule=rule)
    return result, time.perf_counter() - start


def main() -> int:
    torch.set_num_threads(1)
    frame, roles = data.load_ai4i2020(sys.argv[1])
    dev = data.mask_unsampled(frame, roles, 0.2, np.random.default_rng(0))
    inspector = ActiveInspector(roles, random_state=0).fit(dev)
    with tempfile.TemporaryDirectory() as folder:
        manifest = export.save(inspector, Path(folder) / "model")
        onnx, native = Router.load(Path(folder) / "model", seed=0), Router.from_inspector(inspector, seed=0)
        rows = {}
        for rule in native.rules:
            a, t_onnx = timed(onnx, frame, rule)
            b, t_torch = timed(native, frame, rule)
            rows[rule] = {"max_abs_diff_" + c: float(np.nanmax(np.abs(a[c] - b[c])))
                          for c in ("fault_score", "routing_score", "final_score")}
            rows[rule]["same_decisions"] = bool((a["decision"] == b["decision"]).all())
            rows[rule]["onnx_us_per_product"] = 1e6 * t_onnx / len(frame)
            rows[rule]["torch_us_per_product"] = 1e6 * t_torch / len(frame)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "products": len(frame),
              "graphs": manifest["graphs"], "router": rows}
    with atomic_path(ROOT / "bench" / "results" / "active" / "onnx_parity.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
