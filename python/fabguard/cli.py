"""Command line: ``fabguard <area> <command> ...``.

Each area's module registers its commands with ``register(subparsers)`` and sets ``func`` on every
command parser; ``func(args)`` returns the exit code. Area modules import their heavy dependencies
inside the command functions, and only the chosen area is imported, so ``fabguard yield ...`` never
loads PyTorch. Every refused input ends in one line ``fabguard: error: <what, where>`` and exit code 2,
whether argparse, a command or a library call refused it; Ctrl-C ends in exit code 130 without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

AREAS = {
    "yield": ("fabguard.machine_yield.cli", "find low-yield machines from batch production records"),
    "anomaly": ("fabguard.anomaly.cli", "unsupervised visual anomaly detection"),
    "active": ("fabguard.active.cli", "active inspection with knowledge distillation"),
    "serve": ("fabguard.serve.cli", "run the inspection service (HTTP API)"),
    "models": ("fabguard.serve.models_cli", "the inspection service's model registry"),
}
SINGLE = {"serve"}  # areas that are one command: their register() gets the area's parser itself


class Parser(argparse.ArgumentParser):
    """argparse with fabguard's error line (subcommand parsers inherit it)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"fabguard: error: {self.prog}: {message}\n")


def typed(kind: type, *forms):
    """An argparse ``type``: parse the text as ``kind`` (``int`` or ``float``) and check it against the
    :mod:`fabguard.params` ``forms`` (e.g. ``typed(int, params.SEED)``)."""
    from fabguard import params

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not any(form.accepts(value) for form in forms):
            raise argparse.ArgumentTypeError(f"{text!r} must be {' or '.join(str(f) for f in forms)}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed``, the same on every command."""
    from fabguard import params

    parser.add_argument("--seed", type=typed(int, params.SEED), default=0,
                        help=f"random seed, 0 to {params.MAX_SEED} (default 0)")


class Version(argparse.Action):
    """``--version``, looked up only when asked: importlib.metadata costs every other command 45 ms."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from fabguard import __version__

        print(f"fabguard {__version__}")
        parser.exit()


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with only the chosen area's commands imported and registered."""
    parser = Parser(prog="fabguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=Version)
    areas = parser.add_subparsers(dest="area", metavar="AREA", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in AREAS.items():
        area = areas.add_parser(name, help=help_text, description=help_text)
        if name == chosen and name in SINGLE:
            importlib.import_module(module).register(area)
        elif name == chosen:
            commands = area.add_subparsers(dest="command", metavar="COMMAND", required=True)
            importlib.import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # from here on Ctrl-C raises KeyboardInterrupt, so that half-written outputs are removed on the way out
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = _redeliver_interrupts
    try:
        from fabguard.errors import InputError

        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(argv).parse_args(argv)
        return int(args.func(args) or 0)
    except InputError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # the reader went away (`fabguard ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file that vanished or became unreadable / unwritable after the checks
        if exc.filename is None:
            raise
        return _fail(f"{exc.filename}: {exc.strerror or exc}")
    except MemoryError:
        return _fail("out of memory; use smaller sizes (fewer resamples, images or batches)")
    except KeyboardInterrupt:
        print("fabguard: interrupted", file=sys.stderr)
        return 130


def _redeliver_interrupts(unraisable, _default=sys.unraisablehook) -> None:
    """A Ctrl-C that lands in a callback Python cannot raise from (a garbage-collector or import-lock
    callback) would be printed as "Exception ignored" and lost: send it again a moment later, from another
    thread, so that it reaches the main code once the callback has returned."""
    if unraisable.exc_type is KeyboardInterrupt:
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
    else:
        _default(unraisable)


def _fail(message: str) -> int:
    print(f"fabguard: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
