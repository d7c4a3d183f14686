"""``fabguard models list | add | promote | rollback | shadow | canary | compare | stop``: the registry and
the experiments in the database itself, so they work with the service stopped; running replicas follow a
promotion, rollback or experiment within ``sync_seconds``."""

from __future__ import annotations

import json
from pathlib import Path

from fabguard.serve.cli import add_state_args


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="registered versions; * marks the serving one")
    add_state_args(p)
    p.set_defaults(func=cmd_list)
    p = subparsers.add_parser("add", help="register an exported ONNX artifact with its evaluation report")
    p.add_argument("artifact", type=Path, help="the .onnx file (fabguard anomaly export)")
    p.add_argument("--version", required=True, help="<name>-v<major>.<minor>.<patch>, e.g. vae-wafer-v2.3.1")
    p.add_argument("--report", type=Path, required=True,
                   help="evaluation report JSON with auroc, auprc, fnr_at_fpr5, latency_ms_p50")
    add_state_args(p)
    p.set_defaults(func=cmd_add)
    p = subparsers.add_parser("promote", help="serve a version (refused unless it passes the validation gate)")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="skip the validation gate (recorded as forced)")
    add_state_args(p)
    p.set_defaults(func=cmd_promote)
    p = subparsers.add_parser("rollback", help="serve again the version that served before the current one")
    add_state_args(p)
    p.set_defaults(func=cmd_rollback)
    for mode, text in (("shadow", "score every image with a candidate beside production (production decides)"),
                       ("canary", "let a candidate decide a share of wafers (by a hash of wafer_id)")):
        p = subparsers.add_parser(mode, help=text)
        p.add_argument("version", help="the registered candidate")
        if mode == "canary":
            p.add_argument("--share", type=float, default=None, help="share of wafers (default 0.1, or settings)")
        add_state_args(p)
        p.set_defaults(func=cmd_start, mode=mode)
    p = subparsers.add_parser("compare", help="the candidate against production: rates, tests, reviewed labels")
    p.add_argument("experiment", type=int, nargs="?", help="experiment id (default: the newest)")
    add_state_args(p)
    p.set_defaults(func=cmd_compare)
    p = subparsers.add_parser("stop", help="end a running shadow or canary experiment")
    p.add_argument("experiment", type=int)
    add_state_args(p)
    p.set_defaults(func=cmd_stop)


def _registry(args):
    from fabguard.serve import db
    from fabguard.serve.config import load_settings
    from fabguard.serve.registry import Registry

    settings = load_settings(args.config, home=args.home, db=args.db)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(settings.db_url)
    db.migrate(engine)
    return Registry(engine, settings)


def _experiments(args):
    from fabguard.serve.experiments import Experiments
    from fabguard.serve.metrics import Metrics

    registry = _registry(args)
    return Experiments(registry.engine, registry, registry.settings, Metrics(registry.settings.max_batch))


def cmd_list(args) -> int:
    found = _registry(args).list()
    if not found:
        print("no model registered (fabguard serve registers the bundled default on its first start)")
    for m in found:
        report = m["report"]
        print(f"{'*' if m['serving'] else ' '} {m['version']:32} sha256 {m['sha256'][:12]}  auroc "
              f"{report['auroc']:.4f}  auprc {report['auprc']:.4f}  fnr@fpr5 {report['fnr_at_fpr5']:.4f}  "
              f"latency {report['latency_ms_p50']:.2f} ms")
    return 0


def cmd_add(args) -> int:
    from fabguard.errors import InputError

    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{args.report}: cannot read the report ({exc})") from None
    print(f"registered {_registry(args).register(args.artifact, args.version, report)['version']}")
    return 0


def cmd_promote(args) -> int:
    print(f"serving {_registry(args).promote(args.version, force=args.force)['version']}")
    return 0


def cmd_rollback(args) -> int:
    print(f"serving {_registry(args).rollback()['version']}")
    return 0


def cmd_start(args) -> int:
    found = _experiments(args).start(args.version, args.mode, getattr(args, "share", None))
    share = f" on {found['share']:.0%} of wafers" if found["mode"] == "canary" else ""
    print(f"experiment {found['id']}: {found['mode']} of {found['candidate']}{share} beside {found['baseline']}")
    return 0


def cmd_compare(args) -> int:
    from fabguard.errors import InputError

    experiments = _experiments(args)
    if args.experiment is None:
        newest = experiments.list(1)
        if not newest:
            raise InputError("no experiment yet: start one with fabguard models shadow|canary VERSION")
        args.experiment = newest[0]["id"]
    print(json.dumps(experiments.report(args.experiment), indent=2, default=str))
    return 0


def cmd_stop(args) -> int:
    found = _experiments(args).stop(args.experiment, "ended", "stopped from the command line")
    print(f"experiment {found['id']} ended: production decides every image")
    return 0
