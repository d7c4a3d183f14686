"""Why routing rules find some ai4i2020 faults and not others: per failure mode (TWF, HDF, PWF, OSF, RNF,
read from the file for this analysis only; they are never features), the student's and teacher's
calibrated fault probabilities on the test products and the share of that mode each rule routes at a
20% budget. One stratified split, seed 0, 20% sampled, distilled student, both teachers.

    python bench/active/ai4i_failure_modes.py
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from fabguard.active import data
from fabguard.active.evaluate import split
from fabguard.active.estimator import ActiveInspector
from fabguard.active.routing import batch_count, select_top
from fabguard.outputs import atomic_path

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT.parent / "shared" / "data" / "ai4i2020" / "ai4i2020.csv"
MODES = ["TWF", "HDF", "PWF", "OSF", "RNF"]


def main() -> int:
    torch.set_num_threads(1)
    frame, roles = data.load_ai4i2020(CSV)
    modes = pd.read_csv(CSV, encoding="utf-8-sig").set_index("UDI")[MODES]
    dev, test = split(frame, roles, "stratified", seed=0)
    dev = data.mask_unsampled(dev, roles, 0.2, np.random.default_rng(0))
    test_modes = modes.loc[test["UDI"]].to_numpy()
    rows = []
    for teacher in ("mlp", "gbm"):
        out = ActiveInspector(roles, teacher=teacher, random_state=0).fit(dev).outputs(test)
        k = batch_count(len(test), fraction=0.2)
        routed = {rule: select_top(score, k) for rule, score in out.routing.items()}
        percentile = pd.Series(out.fault_score).rank(pct=True).to_numpy()
        for i, mode in enumerate(MODES + ["none (good)"]):
            sel = test_modes[:, i] == 1 if i < len(MODES) else data.labels(test, roles) == 0
            rows.append({"teacher": teacher, "mode": mode, "products": int(sel.sum()),
                         "student_percentile_median": np.median(percentile[sel]),
                         "student_p_median": np.median(out.fault_score[sel]),
                         "teacher_p_median": np.median(out.teacher_score[sel]),
                         **{f"routed_at_20%_{rule}": r[sel].mean() for rule, r in routed.items()}})
    table = pd.DataFrame(rows)
    out_dir = ROOT / "bench" / "results" / "active" / "ai4i2020_failure_modes"
    with atomic_path(out_dir / "failure_modes.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = table.T.to_string(header=False, float_format=lambda v: f"{v:.3f}")
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(f"# ai4i2020 failure modes vs routing\n\nCommand: `{command}`\n\n{__doc__}\n```\n{text}\n```\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
