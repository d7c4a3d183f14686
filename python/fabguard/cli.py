"""Command line: ``fabguard <area> <command> ...``.

Each area's module registers its commands with ``register(subparsers)`` and sets ``func`` on every
command parser; ``func(args)`` returns the exit code. Area modules import their heavy dependencies
inside the command functions, and only the chosen area is imported, so ``fabguard yield ...`` never
loads PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fabguard import __version__
from fabguard.errors import InputError

AREAS = {
    "yield": ("fabguard.machine_yield.cli", "find low-yield machines from batch production records"),
    "anomaly": ("fabguard.anomaly.cli", "unsupervised visual anomaly detection"),
    "active": ("fabguard.active.cli", "active inspection with knowledge distillation"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with only the chosen area's commands imported and registered."""
    parser = argparse.ArgumentParser(prog="fabguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fabguard {__version__}")
    areas = parser.add_subparsers(dest="area", metavar="AREA", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in AREAS.items():
        area = areas.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            commands = area.add_subparsers(dest="command", metavar="COMMAND", required=True)
            importlib.import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, FileNotFoundError, IsADirectoryError) as exc:
        print(f"fabguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fabguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
