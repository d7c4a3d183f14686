"""Reproduce the paper's Table VI (recall for 1 / 3 / 5 low-yield machines at yield 0.4) and add
precision, which the paper does not report: fabguard's defaults (``em``: information interval, FDR rule)
beside the paper's procedure (``paper``: its interval and rule); optionally the GLM and commonality
baselines.

    python bench/yield_table6.py                       # the full table, 20 repetitions
    python bench/yield_table6.py --machines 250 --batches 2000 --low 3   # one cell

Writes bench/results/yield_table6.md and .csv (or --out PREFIX); the CSV is rewritten after every
cell, so an interrupted run keeps what finished. ``--merge CSV ...`` adds the cells of earlier runs
that this run does not compute (the first file that has a cell wins); the CSV's ``source`` column and
the table's footnote say where each cell comes from.

    python bench/yield_table6.py --methods paper --batches 5000 --merge em.csv bench/results/yield_table6.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from fabguard.machine_yield import CommonalityAnalysis, GLMYieldEstimator, LowYieldDetector
from fabguard.machine_yield.sizing import evaluate, summarize

# Table VI of Adipraja et al. (2024): recall by machines, batches and number of low-yield machines.
PAPER = {
    50: {10: (0, 0, 0), 100: (0, 0.02, 0.02), 200: (0.85, 0.55, 0.57), 300: (0.90, 0.87, 0.84), 400: (1.00, 0.77, 0.75),
         500: (1.00, 0.75, 0.72), 1000: (1.00, 1.00, 1.00), 2000: (1.00, 1.00, 1.00), 3000: (1.00, 1.00, 1.00),
         5000: (1.00, 1.00, 1.00)},
    250: {10: (0, 0, 0), 100: (0, 0, 0), 200: (0, 0, 0), 300: (0, 0, 0), 400: (0.05, 0.02, 0.01), 500: (0.10, 0.13, 0.14),
          1000: (0.85, 0.85, 0.74), 2000: (1.00, 0.98, 0.95), 3000: (1.00, 0.98, 0.97), 5000: (1.00, 1.00, 0.95)},
    500: {10: (0, 0, 0), 100: (0, 0, 0), 200: (0, 0, 0), 300: (0, 0, 0), 400: (0, 0, 0), 500: (0, 0, 0),
          1000: (0.25, 0.17, 0.20), 2000: (0.65, 0.85, 0.77), 3000: (1.00, 1.00, 1.00), 5000: (1.00, 1.00, 1.00)},
}
LOWS = (1, 3, 5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, nargs="+", default=sorted(PAPER))
    parser.add_argument("--batches", type=int, nargs="+", default=sorted(PAPER[50]))
    parser.add_argument("--low", type=int, nargs="+", default=list(LOWS))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["em", "paper"], choices=["em", "paper", "glm", "commonality"])
    parser.add_argument("--level", type=float, default=0.4, help="yield of the low-yield machines (default 0.4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/yield_table6")
    parser.add_argument("--merge", nargs="+", default=[], help="earlier CSVs whose cells this run does not compute")
    args = parser.parse_args()
    earlier = [read_earlier(path) for path in args.merge]  # read now: --out may be one of them

    detectors = {
        "em": LowYieldDetector(threads=args.threads),
        "paper": LowYieldDetector(interval="paper", rule="paper", threads=args.threads),
        "glm": GLMYieldEstimator(),
        "commonality": CommonalityAnalysis(),
    }
    rows = []
    out = Path(args.out)
    cells = [(m, b, k) for b in args.batches for m in args.machines for k in args.low]  # partial runs: whole rows
    started = time.time()
    for machines, batches, low in tqdm(cells, desc="Table VI cells"):
        for method in args.methods:
            t0 = time.perf_counter()
            trials = evaluate(machines, batches, low, args.level, reps=args.reps, seed=args.seed,
                              detector=detectors[method])
            paper = PAPER.get(machines, {}).get(batches) if args.level == 0.4 else None
            rows.append({
                "method": method, "machines": machines, "batches": batches, "low": low, "level": args.level,
                "paper_recall": paper[LOWS.index(low)] if paper and low in LOWS else float("nan"),
                **summarize(trials), "seconds_per_rep": (time.perf_counter() - t0) / args.reps, "source": "this run",
            })
            out.parent.mkdir(parents=True, exist_ok=True)
            merged(rows, earlier).to_csv(out.with_suffix(".csv"), index=False)
    table = merged(rows, earlier)
    command = "python " + " ".join(sys.argv)
    out.with_suffix(".md").write_text(render(table, args, command, time.time() - started))
    print(out.with_suffix(".md").read_text())
    return 0


def read_earlier(path: str) -> pd.DataFrame:
    """An earlier run's CSV; its own cells are labelled with the file, merged ones keep their label."""
    frame = pd.read_csv(path)
    if "source" not in frame:
        return frame.assign(source=path)
    return frame.assign(source=frame["source"].where(frame["source"] != "this run", path))


def merged(rows: list, earlier: list) -> pd.DataFrame:
    """This run's cells, then each earlier table's cells that are not there yet."""
    key = ["method", "machines", "batches", "low", "level"]
    table = pd.DataFrame(rows)
    for frame in earlier:
        new = frame.merge(table[key], on=key, how="left", indicator=True) if len(table) else frame.assign(_merge="left_only")
        table = pd.concat([table, frame[(new["_merge"] == "left_only").to_numpy()]], ignore_index=True)
    return table


def render(table: pd.DataFrame, args, command: str, seconds: float) -> str:
    lines = [
        "# Table VI reproduced: recall (and precision) of low-yield machine detection",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on this machine).",
        f"Low-yield machines at yield {args.level}; healthy yields Uniform(0.998, 1); {args.reps} simulations per cell. "
        "`em`: fabguard's defaults (information interval, threshold = median - margin, Benjamini-Hochberg at 0.05). "
        "`paper`: the paper's procedure (30 resamples of 80%, BCa 95%, threshold = mean yield, p < 0.05, at most "
        "10 candidates).",
        "Recall: mean over simulations of the share of true low-yield machines flagged (the paper's measure). "
        "Precision: flagged machines that are truly low, pooled over simulations (NaN: nothing flagged). "
        "Each cell: `ours recall / paper recall (precision)`.",
        "",
    ]
    for method, part in table.groupby("method", sort=False):
        lines += [f"## {method}", ""]
        header = "| batches | " + " | ".join(f"{m} machines, {k} low" for m in sorted(part.machines.unique())
                                             for k in sorted(part.low.unique())) + " |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for batches, row_part in part.groupby("batches"):
            cells = []
            for m in sorted(part.machines.unique()):
                for k in sorted(part.low.unique()):
                    r = row_part[(row_part.machines == m) & (row_part.low == k)]
                    if r.empty:
                        cells.append("")
                        continue
                    r = r.iloc[0]
                    paper = "n/a" if pd.isna(r.paper_recall) else f"{r.paper_recall:.2f}"
                    precision = "-" if pd.isna(r.precision) else f"{r.precision:.2f}"
                    cells.append(f"{r.recall:.2f} / {paper} ({precision})")
            lines.append(f"| {batches} | " + " | ".join(cells) + " |")
        lines.append("")
    sources = table.groupby(["source", "method"], sort=False)["batches"].agg(lambda b: sorted(set(b)))
    lines += ["Where the cells come from (method: batch counts):", ""]
    lines += [f"- {source}, {method}: {', '.join(map(str, b))}" for (source, method), b in sources.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
