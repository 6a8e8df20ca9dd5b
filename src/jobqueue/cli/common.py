"""What the jobqueue commands share: the version option and the guard that turns errors
(and bugs) into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import __version__, config

EXIT_ERROR = 255


def version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s (jobqueue) {__version__}")


def guard(prog: str, body: Callable[[], int]) -> int:
    """Run a command: its errors in one line, a bug too (the traceback only with JOBQUEUE_DEBUG=1)."""
    config.guard_threads(prog)
    try:
        return body()
    except config.UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # zmq errors (address in use, bad endpoint) end up here
        if type(e).__module__.startswith("zmq"):
            print(f"{prog}: {e}", file=sys.stderr)
            return EXIT_ERROR
        return config.internal_error(prog, e)
