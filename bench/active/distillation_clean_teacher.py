"""Does the distillation machinery transfer knowledge when the teacher *is* a cleaner source than the labels?

Simulator regime ``noisy_labels`` (40% of recorded labels replaced): the student learns from the noisy
labels; the teacher is trained (out of fold, basic + advanced) on the *clean* labels of the same training
products. Student AUROC on held-out products against the noisy and the clean labels, for soft teacher
outputs on 20% or 100% of products. In the benchmarks the teacher learns from the same noisy labels as
the student; this run separates "the loss does not work" from "the teacher has nothing cleaner to give".

    python bench/active/distillation_clean_teacher.py
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from fabguard.active.preprocessing import Preprocessor
from fabguard.active.models import NetClassifier, make_teacher, out_of_fold
from fabguard.active.simulate import REGIMES, simulate_inspections
from fabguard.outputs import atomic_path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [(0.0, 1.0), (0.5, 1.0), (0.9, 1.0), (0.5, 2.0)]


def main() -> int:
    torch.set_num_threads(1)
    rows = []
    for seed in range(3):
        noisy, roles = simulate_inspections(**REGIMES["noisy_labels"], seed=seed)
        clean, _ = simulate_inspections(**{**REGIMES["noisy_labels"], "label_noise": 0.0}, seed=seed)
        y_noisy, y_clean = noisy["fault"].to_numpy(), clean["fault"].to_numpy()
        train, test = np.arange(int(0.8 * len(noisy))), np.arange(int(0.8 * len(noisy)), len(noisy))
        basic, full = list(roles.basic), list(roles.features)
        xb = Preprocessor(basic, roles.categorical).fit(noisy.iloc[train][basic]).transform(noisy[basic])
        xf = Preprocessor(full, roles.categorical).fit(noisy.iloc[train][full]).transform(noisy[full])
        teacher = out_of_fold(make_teacher("mlp", seed), xf[train], y_clean[train], np.arange(len(train)), 5, seed)
        rng = np.random.default_rng(seed)
        for rate in (0.2, 1.0):
            has = rng.random(len(train)) < rate
            for lam, temp in SETTINGS:
                student = NetClassifier(distill_lambda=lam, temperature=temp, random_state=seed)
                score = student.fit(xb[train], y_noisy[train], teacher_logit=np.where(has, teacher, np.nan))
                score = score.decision_function(xb[test])
                rows.append({"seed": seed, "soft_share": rate, "lambda": lam, "T": temp,
                             "auroc_noisy": roc_auc_score(y_noisy[test], score),
                             "auroc_clean": roc_auc_score(y_clean[test], score)})
    table = pd.DataFrame(rows)
    base = table[table["lambda"] == 0].set_index(["seed", "soft_share"])["auroc_clean"]
    table["diff_clean"] = table["auroc_clean"] - [base[(s, r)] for s, r in zip(table["seed"], table["soft_share"])]
    summary = table.groupby(["soft_share", "lambda", "T"])[["auroc_noisy", "auroc_clean", "diff_clean"]].agg(
        ["mean", "std"]).round(4)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = ROOT / "bench" / "results" / "active" / "distillation" / "clean_teacher.md"
    with atomic_path(out) as tmp:
        tmp.write_text(f"# Distillation from a clean-label teacher\n\nCommand: `{command}`\n\n{__doc__}\n```\n"
                       f"{summary.to_string()}\n```\n")
    print(summary.to_string())
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
