"""``fabguard serve``: start the service with uvicorn. FastAPI and uvicorn are imported when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fabguard.cli import typed
from fabguard.params import Interval


def add_state_args(parser: argparse.ArgumentParser) -> None:
    """``--home``, ``--db`` and ``--config``: where the registry and the log live (serve and models)."""
    parser.add_argument("--home", type=Path, help="state folder (default: $FABGUARD_HOME, else the user "
                                                  "data folder)")
    parser.add_argument("--db", help="database URL (default: SQLite in the state folder; e.g. "
                                     "postgresql://user@host/fabguard)")
    parser.add_argument("--config", type=Path, help="TOML file of settings (names as in docs/serve.md)")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=typed(int, Interval(int, 1, 65535)), default=8000)
    add_state_args(parser)
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token of the write endpoints "
                                                        "(default: $FABGUARD_TOKEN, else home/token)")
    parser.set_defaults(func=cmd_serve)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")  # none: run the service
    p = commands.add_parser("prune", help="delete stored images and heatmaps past the retention, once",
                            description="Delete the stored images and heatmaps of inspections older than "
                                        "retain_images_days, except those of the review queue (docs/serve.md, "
                                        "Image retention), and exit. The service does this itself every "
                                        "retention_seconds when retain_images_days is set.")
    add_state_args(p)
    p.add_argument("--days", type=typed(float, Interval(float, 0, None, "neither")),
                   help="retention in days (default: the retain_images_days setting)")
    p.add_argument("--full", action="store_true", help="read every expired inspection again, not only those "
                                                       "expired since the last run (e.g. after a restore)")
    p.set_defaults(func=cmd_prune)


def cmd_serve(args) -> int:
    import uvicorn

    from fabguard.serve.app import create_app
    from fabguard.serve.config import load_settings

    settings = load_settings(args.config, home=args.home, db=args.db, token_file=args.token_file)
    # a request's thread that needs the GIL while another thread holds it (the after-answer thread saving
    # heatmap data or scoring a shadow candidate, another request's decode) waits up to the switch interval,
    # 5 ms by default: a tenth of it keeps that wait inside the latency budget's margin
    sys.setswitchinterval(5e-4)
    # keep-alive longer than clients' and load balancers' idle timeouts (60 s is common): otherwise the
    # server may close a connection just as a client reuses it, and that request fails with a read error
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_keep_alive=75, timeout_graceful_shutdown=10)
    return 0


def cmd_prune(args) -> int:
    from fabguard.errors import InputError
    from fabguard.serve.config import load_settings
    from fabguard.serve.retention import open_log, prune

    settings = load_settings(args.config, home=args.home, db=args.db, retain_images_days=args.days)
    if settings.retain_images_days is None:
        raise InputError("no retention set: give --days or the retain_images_days setting")
    engine = open_log(settings)
    try:
        found = prune(engine, settings, full=args.full)
    finally:
        engine.dispose()
    print(f"deleted {found['images']} images and {found['heatmaps']} heatmaps ({found['bytes'] / 1e6:.1f} MB) of "
          f"inspections before {found['cutoff']} outside the review queue"
          + (f"; {found['failed']} could not be deleted (see the log above)" if found["failed"] else ""))
    return 0
