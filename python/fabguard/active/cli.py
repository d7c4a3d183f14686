"""``fabguard active train | evaluate | route | simulate``. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path

from fabguard import registry
from fabguard.active.limits import MAX_MEMBERS, MAX_THREADS, MEMBERS, THREADS
from fabguard.cli import add_seed, typed
from fabguard.params import FRACTION_OPEN, POSITIVE_INT, Interval

DATASETS = ("table", "ai4i2020", "secom", "simulate")
FRACTION = Interval(float, 0, 1)
RATE = Interval(float, 0, 1, "right")  # a sampling rate: some products, at most all
COST = Interval(float, 0, None)
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")  # what read_table reads back


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="table",
                   help="table: a CSV/Parquet file with the columns named below; ai4i2020 / secom: the UCI "
                        "files (their column roles are built in); simulate: the simulator (--regime)")
    g.add_argument("--data", type=Path, help="the table file, or the ai4i2020 / secom file or folder")
    g.add_argument("--label", help="label column (0/1 or -1/1)")
    g.add_argument("--basic", help="comma-separated basic feature columns")
    g.add_argument("--advanced", help="comma-separated advanced feature columns")
    g.add_argument("--categorical", help="comma-separated feature columns holding categories")
    g.add_argument("--time", help="time column (for the time-ordered split)")
    g.add_argument("--regime", default="reference", help="simulator regime (--dataset simulate)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--teacher", choices=("mlp", "gbm"), default="mlp")
    g.add_argument("--lambda", dest="distill_lambda", metavar="LAMBDA", type=typed(float, FRACTION), default=0.5,
                   help="distillation weight in [0, 1] (0 = no distillation)")
    g.add_argument("--temperature", type=typed(float, Interval(float, 0, None, "neither")), default=2.0)
    g.add_argument("--members", type=typed(int, MEMBERS), default=3,
                   help=f"ensemble members per network, 1 to {MAX_MEMBERS}")
    g.add_argument("--calibration", choices=("platt", "isotonic"), default="platt")
    c = p.add_argument_group("costs (per product)")
    c.add_argument("--cost-basic", type=typed(float, COST), default=1.0)
    c.add_argument("--cost-advanced", type=typed(float, COST), default=10.0)
    c.add_argument("--cost-miss", type=typed(float, COST), default=500.0)
    c.add_argument("--cost-false-alarm", type=typed(float, COST), default=50.0)


def _common(p: argparse.ArgumentParser) -> None:
    add_seed(p)
    p.add_argument("--threads", type=typed(int, THREADS), default=1,
                   help=f"PyTorch / ONNX Runtime threads, 1 to {MAX_THREADS}; at most one per core is used "
                        "(small MLPs run best on 1)")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train teacher, student and routing; save them with ONNX graphs")
    _data_args(p)
    _model_args(p)
    _common(p)
    p.add_argument("--sample-rate", type=typed(float, RATE), default=1.0,
                   help="keep advanced results for only this random share of products (1: use the table as is)")
    p.add_argument("--rule", choices=registry.available("routing_rule"), default="value_brier",
                   help="default routing rule of the model")
    p.add_argument("--budget", type=typed(float, FRACTION),
                   help="default share to inspect (default: cost-minimising on validation)")
    p.add_argument("--out", type=Path, required=True, help="model folder (replaced whole when training ends)")
    p.set_defaults(func=_interruptible(train))

    p = subparsers.add_parser("evaluate", help="metrics against the advanced-inspection ratio, over seeds and splits")
    _data_args(p)
    _model_args(p)
    _common(p)
    p.add_argument("--sample-rate", type=typed(float, RATE), default=0.2,
                   help="share of development products with advanced results")
    p.add_argument("--seeds", type=typed(int, POSITIVE_INT), default=5, help="number of seeds, from --seed on")
    p.add_argument("--splits", nargs="+", choices=("stratified", "time"), default=["stratified", "time"])
    p.add_argument("--test-fraction", type=typed(float, FRACTION_OPEN), default=0.2)
    p.add_argument("--fpr", type=typed(float, FRACTION_OPEN), default=0.05,
                   help="false-alarm rate for the recall metric, in (0, 1)")
    p.add_argument("--out", type=Path, required=True, help="results directory")
    p.set_defaults(func=_interruptible(evaluate))

    p = subparsers.add_parser("route", help="route a table of products with a saved model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="CSV / Parquet with the model's basic columns")
    p.add_argument("--out", type=Path, required=True,
                   help="table (.csv, .csv.gz, .parquet): decision, fault_score, routing_score, final_score")
    p.add_argument("--budget", type=typed(float, FRACTION), help="share of products to inspect (default: the model's)")
    p.add_argument("--money", type=typed(float, COST),
                   help="money for advanced inspections (batch: in all; stream: per product)")
    p.add_argument("--mode", choices=("batch", "stream"), default="batch")
    p.add_argument("--rule", choices=registry.available("routing_rule"), help="routing rule (default: the model's)")
    _common(p)
    p.set_defaults(func=_interruptible(route))

    p = subparsers.add_parser("simulate", help="write a simulated table of basic and advanced inspections")
    p.add_argument("--regime", default="reference", help="named parameter set (overridden by the options below)")
    p.add_argument("--n-products", type=typed(int, Interval(int, 20, None)))
    p.add_argument("--info-gap", type=typed(float, FRACTION))
    p.add_argument("--label-noise", type=typed(float, Interval(float, 0, 1, "left")))
    p.add_argument("--fault-rate", type=typed(float, FRACTION_OPEN))
    p.add_argument("--sample-rate", type=typed(float, RATE), default=1.0)
    p.add_argument("--out", type=Path, required=True, help="table file: .csv, .csv.gz or .parquet")
    _common(p)
    p.set_defaults(func=_interruptible(simulate))


def _interruptible(command):
    """``command`` with Ctrl-C always ending in ``KeyboardInterrupt`` (the CLI's one line and exit 130).
    A Ctrl-C that lands while a compiled module initialises (torch, onnx, onnxruntime are imported
    lazily, some in the middle of ``train``) surfaces as ``ImportError: initialization failed`` instead,
    and a C++ library may turn it into its own error: after an interrupt, any error is the interrupt."""

    @functools.wraps(command)
    def run(args):
        import signal
        import threading

        interrupted = []
        previous = signal.getsignal(signal.SIGINT)
        watch = threading.current_thread() is threading.main_thread() and callable(previous)
        if watch:
            def interrupt(signum, frame):
                interrupted.append(signum)
                previous(signum, frame)  # the CLI's: raise KeyboardInterrupt

            signal.signal(signal.SIGINT, interrupt)
        try:
            return command(args)
        except Exception:  # noqa: BLE001 - re-raised unless it is the interrupt's consequence
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            if watch:
                signal.signal(signal.SIGINT, previous)

    return run


def _setup(args) -> None:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(min(args.threads, os.cpu_count() or 1))  # more threads than cores only cost memory
    torch.manual_seed(args.seed)


def _check_table_out(path: Path, what: str, inputs=()) -> None:
    """A table output path: a suffix the readers read back (checked before any work), then writable."""
    from fabguard.errors import InputError
    from fabguard.outputs import check_output

    if not str(path).lower().endswith(TABLE_SUFFIXES):
        raise InputError(f"{what} {path}: use a .csv, .csv.gz or .parquet file name")
    check_output(path, what, inputs=inputs)


def _write_table(frame, path: Path, **options) -> None:
    from fabguard.outputs import atomic_path

    with atomic_path(path) as tmp:
        if str(path).lower().endswith((".parquet", ".pq")):
            frame.to_parquet(tmp, **options)
        else:  # the temporary file keeps the suffix, so .gz is compressed
            frame.to_csv(tmp, compression="gzip" if str(path).lower().endswith(".gz") else None, **options)


def _regime(name: str) -> dict:
    from fabguard.active.simulate import REGIMES
    from fabguard.errors import InputError

    if name not in REGIMES:
        raise InputError(f"unknown simulator regime {name!r}; known: {sorted(REGIMES)}")
    return dict(REGIMES[name])


def _load(args):
    from fabguard.active import data
    from fabguard.active.simulate import simulate_inspections
    from fabguard.errors import InputError

    if args.dataset == "simulate":
        return simulate_inspections(**_regime(args.regime), seed=args.seed)
    if args.data is None:
        raise InputError(f"--dataset {args.dataset} needs --data")
    if args.dataset == "ai4i2020":
        return data.load_ai4i2020(args.data)
    if args.dataset == "secom":
        return data.load_secom(args.data)
    if not (args.label and args.basic and args.advanced):
        raise InputError("a table needs --label, --basic and --advanced")
    roles = data.Roles(label=args.label, basic=_names(args.basic), advanced=_names(args.advanced),
                       categorical=_names(args.categorical), time=args.time)
    frame = data.read_table(args.data)
    data.check_columns(frame, [roles.label, *roles.features] + ([roles.time] if roles.time else []))
    return frame, roles


def _cost(args):
    from fabguard.active.routing import CostModel

    return CostModel(basic=args.cost_basic, advanced=args.cost_advanced, miss=args.cost_miss,
                     false_alarm=args.cost_false_alarm)


def _params(args) -> dict:
    return {"teacher": args.teacher, "n_members": args.members, "calibration": args.calibration}


def train(args) -> int:
    from fabguard.outputs import check_output

    check_output(args.out, "model folder", inputs=[args.data], folder=True)
    from fabguard.active import export

    export.check_replaceable(args.out)
    _setup(args)
    import numpy as np
    from tqdm import tqdm

    from fabguard.active import data
    from fabguard.active.estimator import ActiveInspector

    frame, roles = _load(args)
    if args.sample_rate < 1:
        frame = data.mask_unsampled(frame, roles, args.sample_rate, np.random.default_rng(args.seed))
    inspector = ActiveInspector(roles, distill_lambda=args.distill_lambda, temperature=args.temperature,
                                rule=args.rule, budget=args.budget, cost=_cost(args), random_state=args.seed,
                                **_params(args))
    with tqdm(total=6, desc="train", file=sys.stderr) as bar:
        inspector.fit(frame, progress=lambda step: (bar.set_postfix_str(f"{step} done"), bar.update(1)))
    manifest = export.save(inspector, args.out, seed=args.seed)
    print(json.dumps({"model": str(args.out), "best_budget": manifest["best_budget"],
                      "onnx_max_abs_diff": {k: v["max_abs_diff_vs_reference"] for k, v in manifest["graphs"].items()},
                      "float32_bound": {k: v["float32_bound"] for k, v in manifest["graphs"].items()}}, indent=1))
    return 0


def evaluate(args) -> int:
    from fabguard.outputs import check_output

    check_output(args.out, "results folder", inputs=[args.data], folder=True)
    _setup(args)
    from tqdm import tqdm

    from fabguard.active.evaluate import evaluate_routing, write_results

    frame, roles = _load(args)
    students = {"undistilled": {"distill_lambda": 0.0},
                "distilled": {"distill_lambda": args.distill_lambda, "temperature": args.temperature}}
    seeds = list(range(args.seed, args.seed + args.seeds))
    with tqdm(total=len(seeds) * len(args.splits) * len(students), desc="evaluate", file=sys.stderr) as bar:
        curves = evaluate_routing(frame, roles, seeds, splits=args.splits, sample_rate=args.sample_rate,
                                  students=students, cost=_cost(args), fpr=args.fpr,
                                  test_fraction=args.test_fraction, progress=bar.update, **_params(args))
    settings = {"dataset": args.dataset, "regime": args.regime if args.dataset == "simulate" else None,
                "seeds": seeds, "splits": args.splits, "sample_rate": args.sample_rate, "fpr": args.fpr,
                "test_fraction": args.test_fraction, "cost": vars(_cost(args)), "students": students,
                **_params(args)}
    title = (args.dataset if args.dataset != "simulate" else f"simulate/{args.regime}") + f", {args.teacher} teacher"
    command = "fabguard " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_results(curves, args.out, title, command, settings)
    print(f"results in {args.out}")
    return 0


def route(args) -> int:
    from fabguard.active import data
    from fabguard.active.router import Router

    _check_table_out(args.out, "routing output", inputs=[args.data, args.model])
    router = Router.load(args.model, seed=args.seed, threads=args.threads)
    frame = data.read_table(args.data)
    result = router.route(frame, budget=args.budget, money=args.money, mode=args.mode, rule=args.rule)
    _write_table(result.rename_axis("row").reset_index(), args.out, index=False)
    inspected = int((result["decision"] == "inspect").sum())
    print(f"{inspected} of {len(result)} products sent to advanced inspection; results in {args.out}")
    return 0


def simulate(args) -> int:
    from fabguard.active.simulate import simulate_inspections

    _check_table_out(args.out, "simulated table")
    params = _regime(args.regime)
    overrides = {"n_products": args.n_products, "info_gap": args.info_gap, "label_noise": args.label_noise,
                 "fault_rate": args.fault_rate, "sample_rate": args.sample_rate}
    params.update({k: v for k, v in overrides.items() if v is not None})
    frame, roles = simulate_inspections(**params, seed=args.seed)
    _write_table(frame, args.out, index=False)
    print(json.dumps({"out": str(args.out), "roles": roles.to_dict(), "fault_rate": float(frame[roles.label].mean())}))
    return 0
