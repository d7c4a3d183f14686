"""Import cost of the light core: ``import fabguard.machine_yield`` and ``fabguard yield detect --help``,
for this checkout and, side by side, an earlier one.

    git worktree add /tmp/before a7aa772 && cp python/fabguard/_core*.so /tmp/before/python/fabguard/
    python bench/import_time.py --before /tmp/before/python

Each measurement is a fresh interpreter; the variants are interleaved (before, after, before, ...) so
machine noise hits both alike; medians over --repeats. ``-X importtime``'s cumulative microseconds of
``fabguard.machine_yield`` is the import's own cost; the wall time of ``--help`` includes interpreter
start. Also lists which heavy packages each import pulled in. Writes bench/results/import_time.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "onnx", "onnxruntime", "sklearn", "matplotlib", "scipy", "scipy.stats", "pandas", "pyarrow")


# An editable install's import hook would serve this checkout whatever PYTHONPATH says: drop it for the
# earlier checkout, so that its own files are imported.
UNHOOK = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith('ScikitBuild')]; "


def run(pythonpath: str | None, code: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
        code = UNHOOK + code
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, check=True)


def import_us(pythonpath: str | None) -> int:
    err = run(pythonpath, "import fabguard.machine_yield", "-X", "importtime").stderr
    line = [ln for ln in err.splitlines() if ln.rstrip().endswith("| fabguard.machine_yield")][-1]
    return int(line.split("|")[1])


def help_s(pythonpath: str | None) -> float:
    start = time.perf_counter()
    run(pythonpath, "import runpy, sys; sys.argv = ['fabguard', 'yield', 'detect', '--help']; "
                    "runpy.run_module('fabguard', run_name='__main__')")
    return time.perf_counter() - start


def modules(pythonpath: str | None) -> str:
    code = ("import sys, fabguard.machine_yield; "
            f"print(fabguard.__file__, ':', ', '.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')")
    return run(pythonpath, code).stdout.strip().split(" : ")[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="PYTHONPATH of the earlier checkout (its python/ folder, with _core built)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="bench/results/import_time.md")
    args = parser.parse_args()
    variants = {"after (this checkout)": None}
    if args.before:
        variants = {"before": args.before, **variants}
    times = {name: {"import": [], "help": []} for name in variants}
    for _ in range(args.repeats):
        for name, path in variants.items():
            times[name]["import"].append(import_us(path) / 1e6)
            times[name]["help"].append(help_s(path))
    lines = ["# Import cost of the yield engine", "",
             f"`python bench/import_time.py{' --before ' + args.before if args.before else ''}`; medians of "
             f"{args.repeats} fresh interpreters each, interleaved; {os.cpu_count()} CPUs.", "",
             "| variant | `import fabguard.machine_yield` (s, -X importtime) | `fabguard yield detect --help` (s, wall) "
             "| heavy modules loaded by the import |", "| --- | --- | --- | --- |"]
    for name, path in variants.items():
        lines.append(f"| {name} | {statistics.median(times[name]['import']):.3f} | "
                     f"{statistics.median(times[name]['help']):.3f} | {modules(path)} |")
    if args.before:
        b, a = times["before"], times["after (this checkout)"]
        lines += ["", f"Ratio before / after: import {statistics.median(b['import']) / statistics.median(a['import']):.1f}x, "
                  f"--help {statistics.median(b['help']) / statistics.median(a['help']):.1f}x."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
