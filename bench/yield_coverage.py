"""Do the 95% intervals contain the true yields? Coverage and width per scenario, ours beside the paper's.

    python bench/yield_coverage.py                     # the scenarios below, 5 simulations each
    python bench/yield_coverage.py --reps 2 --scenarios 50x1000x3@0.4

A scenario is MACHINESxBATCHESxLOW@LEVEL (low-yield machines at yield LEVEL, healthy Uniform(0.998, 1)).
Per simulation: LowYieldDetector with the information interval (default), the bootstrap interval and the
paper's interval;
coverage = share of machines whose interval contains the simulator's true yield, pooled over machines
and simulations, and apart for low-yield and healthy machines; the median interval width. Rows are
appended to the CSV as each simulation finishes (partial results survive an interruption).
Writes bench/results/yield_coverage.md and .csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fabguard.machine_yield import LowYieldDetector, simulate
from fabguard.machine_yield.sizing import rep_seed

SCENARIOS = ["50x1000x3@0.4", "250x2000x3@0.4", "250x2000x5@0.9", "500x3000x3@0.8"]
INTERVALS = ("information", "bootstrap", "paper")


def parse(s: str):
    size, level = s.split("@")
    m, b, k = (int(v) for v in size.split("x"))
    return m, b, k, float(level)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="bench/results/yield_coverage")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_suffix(".csv")
    csv.unlink(missing_ok=True)
    started = time.time()
    for scenario in args.scenarios:
        machines, batches, low, level = parse(scenario)
        for rep in range(args.reps):
            s = rep_seed(args.seed, rep)
            sim = simulate(machines, batches, low, level, seed=s)
            rows = []
            for interval in INTERVALS:
                t0 = time.perf_counter()
                det = LowYieldDetector(interval=interval, rule="paper" if interval == "paper" else "fdr",
                                       seed=s, threads=args.threads).fit(sim.data)
                seconds = time.perf_counter() - t0
                m = det.report_.machines.merge(sim.truth, on="machine", suffixes=("", "_true"))
                covers = (m.ci_low <= m.yield_true) & (m.yield_true <= m.ci_high)
                for group, mask in (("all", np.ones(len(m), bool)), ("low-yield", m.low_yield_true.to_numpy()),
                                    ("healthy", ~m.low_yield_true.to_numpy())):
                    rows.append({"scenario": scenario, "rep": rep, "seed": s, "interval": interval, "group": group,
                                 "machines": int(mask.sum()), "covered": int(covers[mask].sum()),
                                 "width_median": float((m.ci_high - m.ci_low)[mask].median()),
                                 "bias_mean": float((m["yield"] - m.yield_true)[mask].mean()),
                                 "seconds": seconds})
            pd.DataFrame(rows).to_csv(csv, mode="a", header=not csv.exists(), index=False)
            print(f"{scenario} rep {rep} done ({(time.time() - started) / 60:.1f} min)", file=sys.stderr, flush=True)
    table = pd.read_csv(csv)
    out.with_suffix(".md").write_text(render(table, "python " + " ".join(sys.argv), time.time() - started))
    print(out.with_suffix(".md").read_text())
    return 0


def render(table: pd.DataFrame, command: str, seconds: float) -> str:
    g = table.groupby(["scenario", "group", "interval"], sort=False)
    summary = g.agg(sims=("rep", "nunique"), machines=("machines", "sum"), covered=("covered", "sum"),
                    width=("width_median", "median"), bias=("bias_mean", "mean"), seconds=("seconds", "mean"))
    summary["coverage"] = summary.covered / summary.machines
    wide = summary[["coverage", "width"]].unstack("interval")
    lines = [
        "# Coverage of the 95% intervals on simulated truth",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min). Scenario MACHINESxBATCHESxLOW@LEVEL: LOW machines at yield "
        "LEVEL, healthy Uniform(0.998, 1), the paper's Table V otherwise. Coverage: machines whose interval contains "
        "the true yield, pooled over machines and simulations. Width: median over simulations of the median width.",
        "`information`: fabguard's default (full-data EM estimate +- z x SE, SE from the outer product of the "
        "per-batch scores). `bootstrap`: the estimate +- t x SE of 30 bootstrap resamples of the batches. "
        "`paper`: the paper's BCa CI of the mean of 30 estimates on 80% subsets.",
        "",
        "| scenario | machines | sims | " + " | ".join(f"coverage, {i}" for i in INTERVALS) + " | "
        + " | ".join(f"median width, {i}" for i in INTERVALS) + " |",
        "|---|---|---|" + "---|" * (2 * len(INTERVALS)),
    ]
    for (scenario, group), row in wide.iterrows():
        n = summary.loc[(scenario, group, INTERVALS[0])]
        lines.append(f"| {scenario} | {group} ({int(n.machines / n.sims)}) | {int(n.sims)} | "
                     + " | ".join(f"{row[('coverage', i)]:.3f}" for i in INTERVALS) + " | "
                     + " | ".join(f"{row[('width', i)]:.2e}" for i in INTERVALS) + " |")
    seconds = summary["seconds"].unstack("interval")
    bias = summary.xs(INTERVALS[0], level="interval")
    lines += ["", "Mean bias of the estimates (full-data EM, the same for information and bootstrap) and seconds "
              "per detect:", "", "| scenario | group | bias | " + " | ".join(f"seconds, {i}" for i in INTERVALS) + " |",
              "|---|---|---|" + "---|" * len(INTERVALS)]
    for (scenario, group), row in bias.iterrows():
        lines.append(f"| {scenario} | {group} | {row.bias:+.4f} | "
                     + " | ".join(f"{seconds.loc[(scenario, group), i]:.2f}" for i in INTERVALS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
