"""Speed of low-yield detection at 500 machines x 5000 batches: whole process and in process, where the
time goes (imports, start, EM, information, report), the bootstrap and paper procedures beside; EM
updates to the default stop with and without SQUAREM.

    python bench/yield_speed.py                    # the issue's setting
    python bench/yield_speed.py --machines 250 --batches 2000 --repeats 3

Measures, interleaved so that machine noise hits every variant alike:
- whole process: ``fabguard yield detect FILE.csv --quiet --threads 2`` (fabguard's defaults, the
  bootstrap interval, and ``--interval paper --rule paper``); processes that only import what detect
  imports, numpy alone, pandas alone, and ``fabguard`` alone;
- in process: ``LowYieldDetector().fit(data)`` on loaded data (threads 1 and 2; bootstrap; paper),
  and the default fit's parts: start values, full-data EM, information SEs (score outer product and
  its inverse), the rest (report);
- the full-data EM: the authors' stop (plain EM, L2 change 1e-3, their model), plain EM and SQUAREM to
  the default stop (relative log-likelihood change 1e-13): updates, seconds, distance to the optimum;
- C++ vs NumPy agreement (25 SQUAREM updates; the score outer product at the default fit) and threads
  1 vs 2 bit-identical.
Reports medians over --repeats runs and the 1-minute load average (the machine is shared). Writes
bench/results/yield_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fabguard import _core
from fabguard.machine_yield import LowYieldDetector, simulate
from fabguard.machine_yield.em import fit_subsets, information_se, starting_values
from fabguard.machine_yield.em_numpy import score_outer_product_numpy

IMPORTS = ("import fabguard.cli, fabguard.machine_yield.cli, fabguard.machine_yield.data, "
           "fabguard.machine_yield.detector, statistics, pyarrow.csv")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def run(argv) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    return wall, usage.ru_utime + usage.ru_stime


def parts(data, threads: int) -> dict:
    """(wall, CPU) seconds of the default fit's parts, run as the detector runs them."""
    out = {}
    start, out["start"] = _timed_value(lambda: starting_values(data))
    full, out["em"] = _timed_value(lambda: fit_subsets(data, [np.arange(data.n_batches)], start=start, threads=threads))
    a = np.where(np.isfinite(full.miss_rate[0]), full.miss_rate[0], start[1])
    free = np.r_[np.isfinite(full.yield_[0]), np.isfinite(full.miss_rate[0])]
    _, out["information"] = _timed_value(lambda: information_se(data, np.nan_to_num(full.yield_[0], nan=1.0), a, free,
                                                                threads=threads))
    return out


def _timed_value(fn):
    """(fn(), (wall, CPU) seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, (time.perf_counter() - start, time.process_time() - cpu)


def load_csv(path) -> None:
    from fabguard.machine_yield.data import load_production

    load_production(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--batches", type=int, default=5000)
    parser.add_argument("--low", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/yield_speed")
    args = parser.parse_args()

    sim = simulate(args.machines, args.batches, args.low, 0.4, seed=args.seed)
    data = sim.data
    folder = tempfile.mkdtemp()
    csv = Path(folder) / "records.csv"
    data.to_frame().to_csv(csv, index=False)
    fabguard = [sys.executable, "-m", "fabguard", "yield", "detect", str(csv), "--quiet", "--threads", "2"]
    variants = {
        "process_ours": lambda: run(fabguard),
        "process_bootstrap": lambda: run([*fabguard, "--interval", "bootstrap"]),
        "process_paper": lambda: run([*fabguard, "--interval", "paper", "--rule", "paper"]),
        "process_imports_only": lambda: run([sys.executable, "-c", IMPORTS]),
        "process_python_only": lambda: run([sys.executable, "-c", "pass"]),
        "process_numpy_only": lambda: run([sys.executable, "-c", "import numpy"]),
        "process_pandas_only": lambda: run([sys.executable, "-c", "import pandas"]),
        "process_fabguard_only": lambda: run([sys.executable, "-c", "import fabguard"]),
        "process_pyarrow_csv_only": lambda: run([sys.executable, "-c", "import numpy, pyarrow.csv"]),
        "load_csv": lambda: timed(lambda: load_csv(csv)),
        "fit_ours_2threads": lambda: timed(lambda: LowYieldDetector(threads=2).fit(data)),
        "fit_ours_1thread": lambda: timed(lambda: LowYieldDetector(threads=1).fit(data)),
        "fit_bootstrap_2threads": lambda: timed(lambda: LowYieldDetector(interval="bootstrap", threads=2).fit(data)),
        "fit_paper_2threads": lambda: timed(lambda: LowYieldDetector(interval="paper", rule="paper",
                                                                     threads=2).fit(data)),
    }
    times = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    split = {t: [] for t in (1, 2)}
    loads = []
    for r in range(args.repeats):
        for name, fn in variants.items():
            wall, used = fn()
            times[name].append(wall)
            cpu[name].append(used)
        for threads in split:
            split[threads].append(parts(data, threads))
        loads.append(os.getloadavg()[0])
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    median = {k: float(np.median(v)) for k, v in times.items()}
    median_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    parts_median = {t: {k: [float(np.median([p[k][i] for p in v])) for i in (0, 1)] for k in v[0]}
                    for t, v in split.items()}

    start = starting_values(data)
    full = [np.arange(data.n_batches)]
    optimum = fit_subsets(data, full, start=start, tol=0.0, max_iter=20_000)
    paper_start = starting_values(data, "lsq")
    optimum_paper = fit_subsets(data, full, start=paper_start, tol=0.0, max_iter=20_000, escapes=False)
    em = {}
    for name, kwargs, best in (
        ("authors' stop: plain EM, L2 change <= 1e-3, their model and start",
         {"stop": "l2", "tol": 1e-3, "max_iter": 100, "escapes": False, "start": paper_start}, optimum_paper),
        ("plain EM, relative log-likelihood change <= 1e-13", {"accelerate": False, "max_iter": 100_000, "start": start},
         optimum),
        ("SQUAREM, relative log-likelihood change <= 1e-13 (default)", {"start": start}, optimum),
    ):
        seconds = [timed(lambda: fit_subsets(data, full, **kwargs))[0] for _ in range(3)]
        fit = fit_subsets(data, full, **kwargs)
        em[name] = {"updates": int(fit.n_iter[0]), "seconds": float(np.median(seconds)),
                    "max_yield_distance_to_optimum": float(np.nanmax(np.abs(fit.yield_ - best.yield_)))}
    short = {"tol": 0.0, "max_iter": 25, "start": start}
    cpp, ref = fit_subsets(data, full, **short), fit_subsets(data, full, engine="numpy", **short)
    default = fit_subsets(data, full, start=start)
    p = np.nan_to_num(default.yield_[0], nan=1.0)
    a = np.where(np.isfinite(default.miss_rate[0]), default.miss_rate[0], start[1])
    free = np.r_[np.isfinite(default.yield_[0]), np.isfinite(default.miss_rate[0])]
    free_index = np.where(free, np.cumsum(free) - 1, -1)
    opg_cpp = _core.score_outer_product(data.core, p, a, free_index)["opg"]
    opg_ref = score_outer_product_numpy(data, p, a, free_index)[1]
    one, two = (LowYieldDetector(threads=t).fit(data) for t in (1, 2))
    low = set(sim.low_yield_machines)
    result = {
        "command": "python " + " ".join(sys.argv),
        "setting": {"machines": args.machines, "batches": args.batches, "rows": data.n_rows, "low": args.low,
                    "repeats": args.repeats, "seed": args.seed, "csv_bytes": csv.stat().st_size},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1min_per_repeat": loads},
        "median_seconds": median,
        "median_cpu_seconds": median_cpu,
        "all_seconds": times,
        "all_cpu_seconds": cpu,
        "fit_parts_median_seconds": {f"{t}_threads": v for t, v in parts_median.items()},
        "import_share_of_process_ours": median["process_imports_only"] / median["process_ours"],
        "em_full_data": em,
        "em_updates_detect": int(two.n_iter_[0]),
        "max_abs_yield_difference_cpp_vs_numpy_25_updates": float(np.nanmax(np.abs(cpp.yield_ - ref.yield_))),
        "max_abs_opg_difference_cpp_vs_numpy_relative": float(np.max(np.abs(opg_cpp - opg_ref)) / np.max(np.abs(opg_ref))),
        "identical_threads_1_and_2": bool(one.report_.machines.equals(two.report_.machines)),
        "recall_precision_ours": [len(set(two.low_yield_machines_) & low) / len(low),
                                  len(set(two.low_yield_machines_) & low) / max(1, len(two.low_yield_machines_))],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict) -> str:
    m, c, s = r["median_seconds"], r["median_cpu_seconds"], r["setting"]
    p1, p2 = r["fit_parts_median_seconds"]["1_threads"], r["fit_parts_median_seconds"]["2_threads"]
    loads = r["machine"]["load_avg_1min_per_repeat"]
    lines = [
        f"# Low-yield detection speed: {s['machines']} machines x {s['batches']} batches ({s['rows']} rows)",
        "",
        (f"Command: `{r['command']}`. {r['machine']['cpu_count']} cores (shared with other work), "
        f"{r['machine']['platform']}; 1-min load average after each repeat {', '.join(f'{x:.1f}' for x in loads)}. "
        f"Medians of {s['repeats']} interleaved runs: wall seconds, and in brackets CPU seconds (user + system, all "
        "threads), which the other work on the machine inflates less. Defaults: information interval (SEs from "
        "the outer product of the per-batch scores), SQUAREM to a relative log-likelihood change of 1e-13, per-step "
        "start. Bootstrap: 30 resamples, each warm-started, stopped at 1e-9. Paper: 30 resamples of 80%, plain EM to "
        "an L2 change of 1e-3, BCa with 10,000 resamples."),
        "",
        "| | defaults (information) | bootstrap interval | paper's procedure |",
        "|---|---|---|---|",
        (f"| whole process, `fabguard yield detect FILE.csv --quiet --threads 2` | {m['process_ours']:.2f} s "
        f"({c['process_ours']:.2f}) | {m['process_bootstrap']:.2f} s ({c['process_bootstrap']:.2f}) | "
        f"{m['process_paper']:.2f} s ({c['process_paper']:.2f}) |"),
        (f"| in process, `LowYieldDetector(...).fit(data)`, 2 threads | {m['fit_ours_2threads']:.3f} s "
        f"({c['fit_ours_2threads']:.3f}) | {m['fit_bootstrap_2threads']:.2f} s ({c['fit_bootstrap_2threads']:.2f}) | "
        f"{m['fit_paper_2threads']:.2f} s ({c['fit_paper_2threads']:.2f}) |"),
        f"| in process, 1 thread | {m['fit_ours_1thread']:.3f} s ({c['fit_ours_1thread']:.3f}) | | |",
        "",
        "Where the whole-process time goes (separate processes, medians, wall (CPU)):",
        "",
        "| process | seconds |",
        "|---|---|",
        f"| `python -c pass` | {m['process_python_only']:.2f} ({c['process_python_only']:.2f}) |",
        f"| `import numpy` | {m['process_numpy_only']:.2f} ({c['process_numpy_only']:.2f}) |",
        (f"| `import numpy, pyarrow.csv` (the CSV reader) | {m['process_pyarrow_csv_only']:.2f} "
        f"({c['process_pyarrow_csv_only']:.2f}) |"),
        (f"| `import pandas` (not imported by the default detect of a CSV any more) | {m['process_pandas_only']:.2f} "
        f"({c['process_pandas_only']:.2f}) |"),
        (f"| `import fabguard` (the package alone) | {m['process_fabguard_only']:.2f} "
        f"({c['process_fabguard_only']:.2f}) |"),
        (f"| everything detect imports | {m['process_imports_only']:.2f} ({c['process_imports_only']:.2f}); "
        f"{100 * r['import_share_of_process_ours']:.0f}% of the default detect's wall time |"),
        (f"| in process: reading and validating the CSV (`load_production`, pyarrow already imported) | "
        f"{m['load_csv']:.3f} ({c['load_csv']:.3f}) |"),
        "",
        ("The default fit's parts (in process, medians, wall (CPU); the rest is the whole fit's CPU seconds less "
        "its parts', CPU seconds being steadier than wall ones under load):"),
        "",
        "| part | 1 thread | 2 threads |",
        "|---|---|---|",
        f"| start values (per-step yields, miss rates) | {_pair(p1['start'])} | {_pair(p2['start'])} |",
        f"| full-data EM ({r['em_updates_detect']} updates) | {_pair(p1['em'])} | {_pair(p2['em'])} |",
        (f"| information SEs (score outer product, its inverse's diagonal) | {_pair(p1['information'])} | "
        f"{_pair(p2['information'])} |"),
        (f"| the rest of `fit` (checks, report table), CPU: the whole fit's median less its parts' (a few ms either way is noise) | {c['fit_ours_1thread'] - sum(v[1] for v in p1.values()):.3f} s "
        f"| {c['fit_ours_2threads'] - sum(v[1] for v in p2.values()):.3f} s |"),
        "",
        "Full-data EM to its stop (median of 3 runs, 1 thread):",
        "",
        "| EM | updates | seconds | max distance of the yields to the optimum |",
        "|---|---|---|---|",
    ]
    for name, e in r["em_full_data"].items():
        lines.append(f"| {name} | {e['updates']} | {e['seconds']:.3f} | {e['max_yield_distance_to_optimum']:.1e} |")
    lines += [
        "",
        ("(The optimum: SQUAREM run until the log-likelihood stops changing; for the authors' stop, the optimum of "
        "their model.)"),
        "",
        (f"- C++ vs NumPy max |yield difference| after 25 SQUAREM updates: "
        f"{r['max_abs_yield_difference_cpp_vs_numpy_25_updates']:.1e}; score outer product at the default fit, max "
        f"difference over max entry: {r['max_abs_opg_difference_cpp_vs_numpy_relative']:.1e}; threads 1 and 2 "
        f"bit-identical reports: {r['identical_threads_1_and_2']}; recall / precision on this data set: "
        f"{r['recall_precision_ours'][0]:.2f} / {r['recall_precision_ours'][1]:.2f}."),
        "",
    ]
    return "\n".join(lines)


def _pair(seconds: list) -> str:
    return f"{seconds[0]:.3f} s ({seconds[1]:.3f})"


if __name__ == "__main__":
    raise SystemExit(main())
