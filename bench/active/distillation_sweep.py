"""Distillation sweep: student AUROC on held-out products for a grid of lambda and T, against the
undistilled student (lambda = 0), with the same teacher, split, sample and seeds.

Only the teacher and students are trained here (no routing), on all development products; the test
share (20%) is held out with a stratified or time-ordered split. Paired differences (distilled -
undistilled, same seed) are reported as mean ± sd.

    python bench/active/distillation_sweep.py --dataset ai4i2020 --teacher gbm --seeds 5
    python bench/active/distillation_sweep.py --dataset simulate --regime noisy_labels
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from fabguard.active import data
from fabguard.active.evaluate import split
from fabguard.active.models import NetClassifier, make_teacher, out_of_fold
from fabguard.active.preprocessing import Preprocessor
from fabguard.active.simulate import REGIMES, simulate_inspections
from fabguard.outputs import atomic_path

ROOT = Path(__file__).resolve().parents[2]
GRID = [(0.0, 1.0)] + [(lam, t) for lam in (0.25, 0.5, 0.9) for t in (1.0, 2.0, 4.0)] + [(1.0, 2.0)]


def load(args):
    if args.dataset == "ai4i2020":
        return data.load_ai4i2020(ROOT.parent / "shared" / "data" / "ai4i2020")
    if args.dataset == "secom":
        return data.load_secom(ROOT.parent / "shared" / "data" / "secom")
    return simulate_inspections(**REGIMES[args.regime], seed=0)


def sweep(frame, roles, teacher_kind: str, seeds, sample_rate: float, split_kind: str) -> pd.DataFrame:
    rows = []
    with tqdm(total=len(seeds) * len(GRID), desc="students", file=sys.stderr) as bar:
        for seed in seeds:
            dev, test = split(frame, roles, split_kind, seed)
            dev = data.mask_unsampled(dev, roles, sample_rate, np.random.default_rng(seed))
            y, yt = data.labels(dev, roles), data.labels(test, roles)
            x, xt = data.features(dev, roles, roles.features), data.features(test, roles, roles.features)
            s = data.sampled(x, roles)
            basic = Preprocessor(roles.basic, roles.categorical).fit(x[list(roles.basic)])
            full = Preprocessor(roles.features, roles.categorical).fit(x[s][list(roles.features)])
            xb, xbt = basic.transform(x[list(roles.basic)]), basic.transform(xt[list(roles.basic)])
            xf, xft = full.transform(x[s][list(roles.features)]), full.transform(xt[list(roles.features)])
            teacher = make_teacher(teacher_kind, seed)
            fitted = clone(teacher).fit(xf, y[s])
            teacher_logit = np.full(len(y), np.nan)
            teacher_logit[s] = out_of_fold(teacher, xf, y[s], np.arange(s.sum()), 5, seed)
            teacher_auroc = roc_auc_score(yt, fitted.decision_function(xft))
            for lam, temp in GRID:
                student = NetClassifier(distill_lambda=lam, temperature=temp, random_state=seed)
                student.fit(xb, y, teacher_logit=teacher_logit)
                rows.append({"seed": seed, "lambda": lam, "T": temp, "teacher_auroc": teacher_auroc,
                             "student_auroc": roc_auc_score(yt, student.decision_function(xbt))})
                bar.update(1)
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("ai4i2020", "secom", "simulate"), required=True)
    parser.add_argument("--regime", default="reference", choices=sorted(REGIMES))
    parser.add_argument("--teacher", choices=("mlp", "gbm"), default="mlp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=float, default=0.2)
    parser.add_argument("--split", choices=("stratified", "time"), default="stratified")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frame, roles = load(args)
    result = sweep(frame, roles, args.teacher, list(range(args.seed, args.seed + args.seeds)), args.sample_rate,
                   args.split)
    base = result[result["lambda"] == 0].set_index("seed")["student_auroc"]
    result["diff_vs_undistilled"] = result["student_auroc"] - result["seed"].map(base)
    table = result.groupby(["lambda", "T"]).agg(student_auroc_mean=("student_auroc", "mean"),
                                                student_auroc_sd=("student_auroc", "std"),
                                                diff_mean=("diff_vs_undistilled", "mean"),
                                                diff_sd=("diff_vs_undistilled", "std"),
                                                teacher_auroc_mean=("teacher_auroc", "mean")).reset_index()
    name = args.dataset if args.dataset != "simulate" else f"sim_{args.regime}"
    out = (ROOT / "bench" / "results" / "active" / "distillation"
           / f"{name}_{args.teacher}_{args.split}_s{args.sample_rate:g}")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with atomic_path(out / "per_seed.csv") as tmp:
        result.to_csv(tmp, index=False, float_format="%.5g")
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.5g")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"command": command, "table": table.to_dict(orient="records")}, indent=1))
    print(command)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
