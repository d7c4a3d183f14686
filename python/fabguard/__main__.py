"""Entry point of the ``fabguard`` command (console script and ``python -m fabguard``).

Until :func:`fabguard.cli.main` takes over, a Ctrl-C (while the command's modules are still importing)
ends the process with the same one line and exit code 130 as a later one, not a traceback; nothing has
been written yet then, so there is nothing to clean up.
"""

import os
import signal
import sys


def _interrupted(signum, frame):
    sys.stderr.write("fabguard: interrupted\n")
    os._exit(130)


def main() -> int:
    signal.signal(signal.SIGINT, _interrupted)
    from fabguard.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
