"""Recall and precision by low-yield level (0.6 / 0.8 / 0.9 / 0.95; the paper simulates these too) at
50 / 250 / 500 machines: fabguard's defaults (``em``) beside the paper's procedure (``paper``).

    python bench/yield_levels.py                              # 20 repetitions per cell
    python bench/yield_levels.py --levels 0.9 --cells 250x2000 --reps 5

A cell is MACHINESxBATCHES with --low low-yield machines at each level; batch counts default to where
the paper's Table VI reaches recall 0.95 at yield 0.4 (50 x 1000, 250 x 2000, 500 x 3000). The CSV is
rewritten after every cell. Writes bench/results/yield_levels.md and .csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from fabguard.machine_yield import LowYieldDetector
from fabguard.machine_yield.sizing import evaluate, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.6, 0.8, 0.9, 0.95])
    parser.add_argument("--cells", nargs="+", default=["50x1000", "250x2000", "500x3000"])
    parser.add_argument("--low", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/yield_levels")
    args = parser.parse_args()
    detectors = {"em": LowYieldDetector(threads=args.threads),
                 "paper": LowYieldDetector(interval="paper", rule="paper", threads=args.threads)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.time()
    for level in args.levels:
        for cell in args.cells:
            machines, batches = (int(v) for v in cell.split("x"))
            for method, detector in detectors.items():
                t0 = time.perf_counter()
                trials = evaluate(machines, batches, args.low, level, reps=args.reps, seed=args.seed, detector=detector)
                rows.append({"method": method, "level": level, "machines": machines, "batches": batches,
                             "low": args.low, "reps": args.reps, **summarize(trials),
                             "seconds_per_rep": (time.perf_counter() - t0) / args.reps})
                pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
            print(f"level {level} {cell} done ({(time.time() - started) / 60:.1f} min)", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    out.with_suffix(".md").write_text(render(table, "python " + " ".join(sys.argv), time.time() - started))
    print(out.with_suffix(".md").read_text())
    return 0


def render(table: pd.DataFrame, command: str, seconds: float | None) -> str:
    took = f" ({seconds / 60:.1f} min on this machine)" if seconds else ""
    cells = table[["machines", "batches"]].drop_duplicates().itertuples(index=False)
    cells = list(cells)
    header = "| level | " + " | ".join(f"{m} machines x {b} batches" for m, b in cells) + " |"
    lines = [
        "# Recall and precision by low-yield level",
        "",
        f"Command: `{command}`{took}. {int(table.low.iloc[0])} low-yield machines per simulation, healthy yields "
        f"Uniform(0.998, 1), {int(table.reps.iloc[0])} simulations per cell. Each cell: "
        "`recall / precision` for fabguard's defaults (em: information interval, median - margin, Benjamini-Hochberg "
        "at 0.05) and, after the arrow, the paper's procedure (resamples of 80%, threshold = mean, p < 0.05, at most "
        "10 candidates). Recall: mean over simulations; precision: pooled (hits / flagged).",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for level, part in table.groupby("level"):
        out = []
        for m, b in cells:
            r = part[(part.machines == m) & (part.batches == b)].set_index("method")
            if r.empty:
                out.append("")
                continue

            def fmt(method):
                if method not in r.index:
                    return "n/a"
                x = r.loc[method]
                precision = "-" if pd.isna(x.precision) else f"{x.precision:.2f}"
                return f"{x.recall:.2f} / {precision}"

            out.append(f"{fmt('em')} -> paper {fmt('paper')}")
        lines.append(f"| {level} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
