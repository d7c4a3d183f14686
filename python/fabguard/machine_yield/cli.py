"""``fabguard yield detect | simulate | sizing``."""

from __future__ import annotations

import argparse
import os
from importlib import resources
from pathlib import Path

from fabguard.errors import InputError

DEMO = "demo_production.csv.gz"


def demo_path() -> Path:
    """The bundled simulated production file (50 machines, 1,000 batches, 3 low-yield at 0.4)."""
    return Path(str(resources.files("fabguard.machine_yield") / DEMO))


def register(commands: argparse._SubParsersAction) -> None:
    # Every number is typed and range-checked while parsing (the same forms as the estimators'
    # _parameter_constraints), so a bad value ends before any data is read. Only argparse, numpy
    # and fabguard.params are imported here: the parser is built on every call, --help included.
    from fabguard.cli import add_seed, typed
    from fabguard.machine_yield._forms import (MAX_ITER, MAX_THREADS, N_BOOTSTRAP, PROBABILITY, PROBABILITY_OPEN,
                                               RESAMPLES, THREADS, YIELD)
    from fabguard.params import POSITIVE_INT, Interval

    threads_help = f"threads, 1 to {MAX_THREADS} (default: all cores)"

    detect = commands.add_parser(
        "detect", help="estimate machine yields and list the confidently low ones",
        description="Estimate every machine's yield and inspection miss rate (EM), with an interval per machine, "
                    "and flag the machines confidently below the fleet (Benjamini-Hochberg across machines).")
    detect.add_argument("data", nargs="?", help=f"CSV or Parquet production records (default: the bundled {DEMO})")
    detect.add_argument("--format", choices=("auto", "long", "authors"), default="auto",
                        help="long: one row per (batch, step); authors: the authors' wide CSV (Lot, "
                             "Process001_MachineNo, ..., Final, CurrentTotalNum, TotalNum, BadNum); "
                             "auto: from the header (default)")
    detect.add_argument("--in-progress", choices=("include", "exclude"), default="include",
                        help="authors' format: lots without their last step (Final -1) (default include)")
    detect.add_argument("--method", choices=("em", "glm", "commonality"), default="em",
                        help="em: the paper's method (default); glm: binomial GLM baseline; "
                             "commonality: Fisher/BH baseline")
    detect.add_argument("--interval", choices=("information", "bootstrap", "paper"), default="information",
                        help="information: SEs from the Fisher information (outer product of the per-batch scores, "
                             "no refit) (default); bootstrap: resamples of the batches, each EM warm-started; paper: "
                             "CI of the mean of estimates on 80%% subsets (a ranking aid, not the yield's uncertainty)")
    detect.add_argument("--rule", choices=("fdr", "paper"), default="fdr",
                        help="fdr: below median - margin, Benjamini-Hochberg at --alpha (default); paper: below "
                             "the mean yield with p < --alpha, at most --max-candidates")
    detect.add_argument("--resamples", type=typed(int, RESAMPLES), default=30,
                        help="--interval bootstrap (and information on data with fewer batches than parameters): "
                             "resamples; paper: subsets; at least 2 (default 30)")
    detect.add_argument("--fraction", type=typed(float, YIELD), default=0.8,
                        help="--interval paper: share of batches per subset, in (0, 1] (default 0.8)")
    detect.add_argument("--alpha", type=typed(float, PROBABILITY_OPEN), default=0.05,
                        help="false discovery rate (fdr rule) or test level (paper rule), in (0, 1) (default 0.05)")
    detect.add_argument("--threshold", type=typed(float, YIELD), default=None,
                        help="fixed yield threshold, in (0, 1] (default: the rule's)")
    detect.add_argument("--margin", type=typed(float, Interval(float, 0, 1, "left")), default=None,
                        help="fdr rule: margin below the median yield, in yield units, in [0, 1) "
                             "(default: 3 robust SDs of the machine yields, at least 1 - median)")
    detect.add_argument("--min-batches", type=typed(int, POSITIVE_INT), default=10,
                        help="fdr rule: machines in fewer batches are reported as too few to tell (default 10)")
    detect.add_argument("--max-candidates", type=typed(int, POSITIVE_INT), default=10,
                        help="flagged machines listed (fdr rule: display only); the paper rule's cap (default 10)")
    detect.add_argument("--confidence", type=typed(float, PROBABILITY_OPEN), default=0.95,
                        help="interval level, in (0, 1) (default 0.95)")
    detect.add_argument("--bootstrap", type=typed(int, N_BOOTSTRAP), default=10_000,
                        help="--interval paper: BCa bootstrap resamples, at least 100 (default 10000)")
    detect.add_argument("--tol", type=typed(float, Interval(float, 0, None)), default=1e-13,
                        help="EM stop: relative change of the log-likelihood, full data (default 1e-13)")
    detect.add_argument("--resample-tol", type=typed(float, Interval(float, 0, None)), default=1e-9,
                        help="EM stop for the bootstrap resamples (default 1e-9)")
    detect.add_argument("--max-iter", type=typed(int, MAX_ITER), default=1000,
                        help="EM update cap per fit (default 1000)")
    detect.add_argument("--no-accelerate", dest="accelerate", action="store_false",
                        help="plain EM instead of SQUAREM")
    detect.add_argument("--threads", type=typed(int, THREADS), default=None, help=threads_help)
    detect.add_argument("--engine", choices=("cpp", "numpy"), default="cpp", help="EM implementation (default cpp)")
    detect.add_argument("--low-batch-quantile", type=typed(float, PROBABILITY_OPEN), default=0.2,
                        help="commonality: batches at or below this yield quantile are low (default 0.2)")
    add_seed(detect)
    detect.add_argument("--top", type=typed(int, Interval(int, 0, None)), default=15,
                        help="rows in the printed table (default 15)")
    detect.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    detect.add_argument("--csv", metavar="OUT", help="write the per-machine table as CSV")
    detect.add_argument("--plot", metavar="OUT.png", help="write a forest plot of yield CIs (.png, .svg or .pdf)")
    detect.add_argument("--quiet", action="store_true", help="no progress bar")
    detect.set_defaults(func=run_detect)

    sim = commands.add_parser("simulate", help="write simulated production records (paper's Table V)")
    sim.add_argument("out", help="output .csv, .csv.gz or .parquet")
    sim.add_argument("--machines", type=typed(int, Interval(int, 2, None)), default=250,
                     help="machines, at least 2 (default 250)")
    sim.add_argument("--batches", type=typed(int, POSITIVE_INT), default=2000, help="batches (default 2000)")
    sim.add_argument("--low", type=typed(int, Interval(int, 0, None)), default=3,
                     help="number of low-yield machines (default 3)")
    sim.add_argument("--low-yield", type=typed(float, PROBABILITY), default=0.4, help="in [0, 1] (default 0.4)")
    sim.add_argument("--healthy-min", type=typed(float, PROBABILITY), default=0.998, help="in [0, 1] (default 0.998)")
    sim.add_argument("--healthy-max", type=typed(float, PROBABILITY), default=1.0, help="in [0, 1] (default 1)")
    sim.add_argument("--inspect-share", type=typed(float, PROBABILITY_OPEN), default=0.3,
                     help="share of machines that inspect, in (0, 1) (default 0.3)")
    sim.add_argument("--truth", metavar="OUT", help="also write the per-machine truth (.csv or .parquet)")
    add_seed(sim)
    sim.set_defaults(func=run_simulate)

    size = commands.add_parser("sizing", help="batches needed for a target recall, by simulation")
    size.add_argument("--machines", type=typed(int, Interval(int, 2, None)), required=True, help="at least 2")
    size.add_argument("--low", type=typed(int, POSITIVE_INT), required=True,
                      help="expected number of low-yield machines, at least 1")
    size.add_argument("--low-yield", type=typed(float, PROBABILITY), default=0.4, help="in [0, 1] (default 0.4)")
    size.add_argument("--target-recall", type=typed(float, YIELD), default=0.95, help="in (0, 1] (default 0.95)")
    size.add_argument("--reps", type=typed(int, POSITIVE_INT), default=20,
                      help="simulations per batch count (default 20)")
    size.add_argument("--resamples", type=typed(int, RESAMPLES), default=30,
                      help="bootstrap resamples, used where a data set has too few batches for the information "
                           "interval; at least 2 (default 30)")
    size.add_argument("--alpha", type=typed(float, PROBABILITY_OPEN), default=0.05, help="in (0, 1) (default 0.05)")
    size.add_argument("--max-batches", type=typed(int, POSITIVE_INT), default=None,
                      help="give up above this (default 64 x machines)")
    size.add_argument("--threads", type=typed(int, THREADS), default=None, help=threads_help)
    add_seed(size)
    size.add_argument("--json", metavar="OUT", help="write the counts tried and their recall as JSON")
    size.add_argument("--quiet", action="store_true", help="no progress bar")
    size.set_defaults(func=run_sizing)


def run_detect(args) -> int:
    from fabguard.machine_yield.data import load_production

    source = args.data or demo_path()
    _check_outputs([("--json", args.json, None), ("--csv", args.csv, None),
                    ("--plot", args.plot, (".png", ".svg", ".pdf"))], source)
    if args.plot:
        from fabguard.machine_yield.report import require_matplotlib

        require_matplotlib()
    if args.data is None:
        print(f"no DATA given: using the bundled demo {source}")
    data = load_production(source, format=args.format, in_progress=args.in_progress)
    if args.method == "em":
        from fabguard.machine_yield.detector import LowYieldDetector

        detector = LowYieldDetector(
            interval=args.interval, rule=args.rule, resamples=args.resamples, fraction=args.fraction, alpha=args.alpha,
            threshold=args.threshold, margin=args.margin, min_batches=args.min_batches,
            max_candidates=args.max_candidates, confidence=args.confidence, n_bootstrap=args.bootstrap, tol=args.tol,
            resample_tol=args.resample_tol, max_iter=args.max_iter, accelerate=args.accelerate, threads=args.threads,
            engine=args.engine, seed=args.seed)
        if args.quiet or args.interval == "information":  # one fit: no bar (and no tqdm import)
            detector.fit(data)
        else:
            from tqdm.auto import tqdm

            with tqdm(total=args.resamples + 1, desc="EM fits", unit="fit") as bar:
                detector.fit(data, progress=lambda done, total: bar.update(done - bar.n))
    elif args.method == "glm":
        from fabguard.machine_yield.baselines import GLMYieldEstimator

        detector = GLMYieldEstimator(alpha=args.alpha, threshold=args.threshold, max_candidates=args.max_candidates,
                                     confidence=args.confidence).fit(data)
    else:
        from fabguard.machine_yield.baselines import CommonalityAnalysis

        detector = CommonalityAnalysis(low_batch_quantile=args.low_batch_quantile, alpha=args.alpha,
                                       max_candidates=args.max_candidates).fit(data)
    report = detector.report_
    print(report.to_text(args.top))
    _write_outputs(report, args)
    return 0


def _check_outputs(outputs, source) -> None:
    """Refuse, before any work, an output path that cannot be written, has the wrong suffix, is the
    input file, or is given twice."""
    from fabguard.outputs import check_output

    seen = {}
    for flag, path, suffixes in outputs:
        if not path:
            continue
        if suffixes and not path.lower().endswith(suffixes):
            raise InputError(f"{flag} {path}: use a {', '.join(suffixes[:-1])} or {suffixes[-1]} file name")
        resolved = check_output(path, flag, inputs=[source]).resolve()
        if resolved in seen:
            raise InputError(f"{flag} {path}: the same file as {seen[resolved]}; choose another path")
        seen[resolved] = flag


def _write_outputs(report, args) -> None:
    from fabguard.outputs import atomic_path

    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            report.to_pandas().to_csv(tmp, index=False)
        print(f"wrote {args.csv}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")


TABLES = (".csv", ".csv.gz", ".parquet")


def _write_table(frame, path: str) -> None:
    from fabguard.outputs import atomic_path

    with atomic_path(path) as tmp:
        if path.lower().endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if path.lower().endswith(".gz") else None)


def run_simulate(args) -> int:
    from fabguard.machine_yield import simulate

    _check_outputs([("OUT", args.out, TABLES), ("--truth", args.truth, TABLES)], None)
    sim = simulate(args.machines, args.batches, args.low, args.low_yield,
                   healthy_yield=(args.healthy_min, args.healthy_max), inspect_share=args.inspect_share, seed=args.seed)
    _write_table(sim.data.to_frame(), args.out)
    print(f"wrote {args.out}: {sim.data.n_batches} batches, {sim.data.n_rows} rows, "
          f"{sim.data.n_machines} machines used; low-yield: {', '.join(sim.low_yield_machines) or 'none'}")
    if args.truth:
        _write_table(sim.truth, args.truth)
        print(f"wrote {args.truth}")
    return 0


def run_sizing(args) -> int:
    import json

    from fabguard.machine_yield._forms import MAX_THREADS
    from fabguard.machine_yield.detector import LowYieldDetector
    from fabguard.machine_yield.sizing import batches_needed
    from fabguard.outputs import atomic_path

    _check_outputs([("--json", args.json, None)], None)
    if args.low > args.machines:
        raise InputError(f"--low {args.low}: more low-yield machines than --machines {args.machines}")
    threads = args.threads or min(os.cpu_count() or 1, MAX_THREADS)
    detector = LowYieldDetector(resamples=args.resamples, alpha=args.alpha, threads=threads)
    result = batches_needed(args.machines, args.low, args.low_yield, target_recall=args.target_recall, reps=args.reps,
                            seed=args.seed, detector=detector, max_batches=args.max_batches, progress=not args.quiet)
    print(result.tried.to_string(index=False, float_format="{:.3f}".format))
    if result.batches is None:
        print(f"recall {args.target_recall} was not reached up to {result.tried['batches'].max()} batches")
    else:
        print(f"{result.batches} batches reach mean recall >= {args.target_recall} for {args.machines} machines "
              f"with {args.low} low-yield machine(s) at {args.low_yield} ({args.reps} simulations per count)")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"batches": result.batches, "target_recall": result.target_recall,
                                       "params": vars(args) | {"func": None},
                                       "tried": result.tried.to_dict(orient="records")}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
