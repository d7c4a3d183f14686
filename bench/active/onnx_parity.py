"""ONNX Runtime vs PyTorch on a saved model and a real table: largest absolute difference of every Router
output (per rule), identical routing decisions, and scoring time per product on this CPU.

    fabguard active train --dataset ai4i2020 --data ../shared/data/ai4i2020 --sample-rate 0.2 --seed 0 \
        --out out/active/ai4i_model
    python bench/active/onnx_parity.py out/active/ai4i_model ../shared/data/ai4i2020/ai4i2020.csv
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from fabguard.active import data
from fabguard.active.router import Router
from fabguard.outputs import atomic_path

ROOT = Path(__file__).resolve().parents[2]


def timed(router: Router, frame, rule: str):
    start = time.perf_counter()
    result = router.route(frame, budget=0.2, rule=rule)
    return result, time.perf_counter() - start


def main() -> int:
    model, table = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    frame = data.read_table(table)
    onnx, native = Router.load(model, backend="onnx"), Router.load(model, backend="torch")
    rows = {}
    for rule in native.inspector.rules_:
        if rule == "random":
            continue  # random draws differ between calls by design
        a, t_onnx = timed(onnx, frame, rule)
        b, t_torch = timed(native, frame, rule)
        rows[rule] = {"max_abs_diff_" + c: float(np.nanmax(np.abs(a[c] - b[c])))
                      for c in ("fault_score", "routing_score", "final_score")}
        rows[rule]["same_decisions"] = bool((a["decision"] == b["decision"]).all())
        rows[rule]["onnx_us_per_product"] = 1e6 * t_onnx / len(frame)
        rows[rule]["torch_us_per_product"] = 1e6 * t_torch / len(frame)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "products": len(frame),
              "manifest_parity": {k: v["max_abs_diff_vs_torch"]
                                  for k, v in json.loads((Path(model) / "manifest.json").read_text())["onnx"].items()},
              "router": rows}
    with atomic_path(ROOT / "bench" / "results" / "active" / "onnx_parity.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
