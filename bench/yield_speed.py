"""Speed of low-yield detection: C++ core (1 and 2 threads) against the plain NumPy EM, side by side.

    python bench/yield_speed.py                    # 500 machines x 5000 batches, the issue's setting
    python bench/yield_speed.py --machines 250 --batches 2000

Measures, interleaved in one process so that machine noise hits every variant alike:
- the EM fits alone (full data + 30 resamples, same subsets and start): C++ threads=1, threads=2, NumPy;
- the full ``detect`` (starting values, 31 EM fits, BCa bootstrap, test) for the same variants.
Reports medians over --repeats runs and the ratios. Writes bench/results/yield_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fabguard import _core
from fabguard.machine_yield import LowYieldDetector, simulate
from fabguard.machine_yield.em import fit_subsets, starting_values


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--batches", type=int, default=5000)
    parser.add_argument("--low", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (NumPy: min(3, repeats))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/yield_speed")
    args = parser.parse_args()

    sim = simulate(args.machines, args.batches, args.low, 0.4, seed=args.seed)
    data = sim.data
    subsets = [np.arange(data.n_batches)] + list(_core.draw_resamples(data.n_batches, 0.8, args.resamples, args.seed))
    start = starting_values(data)

    em = {
        "cpp_1": lambda: fit_subsets(data, subsets, threads=1, start=start),
        "cpp_2": lambda: fit_subsets(data, subsets, threads=2, start=start),
        "numpy": lambda: fit_subsets(data, subsets, engine="numpy", start=start),
    }
    detect = {
        "cpp_1": lambda: LowYieldDetector(resamples=args.resamples, threads=1, seed=args.seed).fit(data),
        "cpp_2": lambda: LowYieldDetector(resamples=args.resamples, threads=2, seed=args.seed).fit(data),
        "numpy": lambda: LowYieldDetector(resamples=args.resamples, engine="numpy", seed=args.seed).fit(data),
    }
    fits = {k: f() for k, f in em.items()}  # warm-up, and the agreement check below
    agreement = float(np.nanmax(np.abs(fits["cpp_2"].yield_ - fits["numpy"].yield_)))
    same_threads = bool(np.array_equal(fits["cpp_1"].yield_, fits["cpp_2"].yield_, equal_nan=True))

    times: dict[str, dict[str, list[float]]] = {"em": {k: [] for k in em}, "detect": {k: [] for k in detect}}
    for r in range(args.repeats):
        for kind, variants in (("em", em), ("detect", detect)):
            for name, fn in variants.items():
                if name == "numpy" and r >= min(3, args.repeats):
                    continue
                times[kind][name].append(timed(fn))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    parts = {
        "starting_values": np.median([timed(lambda: starting_values(data)) for _ in range(3)]),
        "bootstrap_and_test": None,
    }
    det = detect["cpp_2"]()
    median = {kind: {k: float(np.median(v)) for k, v in d.items()} for kind, d in times.items()}
    parts["bootstrap_and_test"] = median["detect"]["cpp_2"] - median["em"]["cpp_2"] - parts["starting_values"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "setting": {"machines": args.machines, "batches": args.batches, "rows": data.n_rows, "low": args.low,
                    "resamples": args.resamples, "repeats": args.repeats, "seed": args.seed},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_avg_1min": os.getloadavg()[0]},
        "em_iterations_full": int(det.n_iter_[0]),
        "em_iterations_median": float(np.median(det.n_iter_)),
        "median_seconds": median,
        "all_seconds": times,
        "ratios": {
            "em_numpy_over_cpp_1thread": median["em"]["numpy"] / median["em"]["cpp_1"],
            "em_numpy_over_cpp_2threads": median["em"]["numpy"] / median["em"]["cpp_2"],
            "em_cpp_1thread_over_2threads": median["em"]["cpp_1"] / median["em"]["cpp_2"],
            "detect_numpy_over_cpp_2threads": median["detect"]["numpy"] / median["detect"]["cpp_2"],
            "detect_cpp_1thread_over_2threads": median["detect"]["cpp_1"] / median["detect"]["cpp_2"],
        },
        "detect_cpp_2threads_breakdown_s": {"starting_values": float(parts["starting_values"]),
                                            "em_fits": median["em"]["cpp_2"],
                                            "bootstrap_and_test": float(parts["bootstrap_and_test"])},
        "max_abs_yield_difference_cpp_vs_numpy": agreement,
        "identical_threads_1_and_2": same_threads,
        "recall": len(set(det.low_yield_machines_) & set(sim.low_yield_machines)) / args.low,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict) -> str:
    m, s, q = r["median_seconds"], r["setting"], r["ratios"]
    b = r["detect_cpp_2threads_breakdown_s"]
    return "\n".join([
        f"# Low-yield detection speed: {s['machines']} machines x {s['batches']} batches ({s['rows']} rows)",
        "",
        f"Command: `{r['command']}`. {r['machine']['cpu_count']} cores, {r['machine']['platform']}, "
        f"1-min load average at the end {r['machine']['load_avg_1min']:.2f}. Medians of {s['repeats']} interleaved runs "
        "(NumPy: at most 3).",
        f"EM: full data + {s['resamples']} resamples of 80%, tol 1e-3; full-data fit took {r['em_iterations_full']} "
        f"iterations (median over fits {r['em_iterations_median']:.0f}).",
        "",
        "| variant | EM fits (s) | full detect (s) |",
        "|---|---|---|",
        f"| C++ core, 1 thread | {m['em']['cpp_1']:.3f} | {m['detect']['cpp_1']:.3f} |",
        f"| C++ core, 2 threads | {m['em']['cpp_2']:.3f} | {m['detect']['cpp_2']:.3f} |",
        f"| NumPy reference | {m['em']['numpy']:.3f} | {m['detect']['numpy']:.3f} |",
        "",
        f"- EM speed ratio NumPy / C++: {q['em_numpy_over_cpp_1thread']:.1f}x (1 thread), "
        f"{q['em_numpy_over_cpp_2threads']:.1f}x (2 threads); C++ 1 -> 2 threads: {q['em_cpp_1thread_over_2threads']:.2f}x.",
        f"- Full detect NumPy / C++ (2 threads): {q['detect_numpy_over_cpp_2threads']:.1f}x; "
        f"C++ 1 -> 2 threads: {q['detect_cpp_1thread_over_2threads']:.2f}x.",
        f"- Full detect with 2 threads, by part: starting values {b['starting_values']:.3f} s, EM fits "
        f"{b['em_fits']:.3f} s, bootstrap and test (scipy BCa, 10,000 resamples per machine) "
        f"{b['bootstrap_and_test']:.3f} s.",
        f"- C++ vs NumPy max |yield difference|: {r['max_abs_yield_difference_cpp_vs_numpy']:.2e}; threads 1 and 2 "
        f"bit-identical: {r['identical_threads_1_and_2']}; recall on this data set: {r['recall']:.2f}.",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
