"""Command lines of ``jobqueue-server``, ``jobqueue-worker`` and ``jobqueue``
(``jq`` lives in :mod:`jobqueue.jq`, kept lean for its start-up).

One module per command: :mod:`.server`, :mod:`.worker`, :mod:`.control` (status, cancel,
drain, keygen, dashboard); :mod:`.common` holds what they share.  This module is the
``jobqueue`` umbrella and the entry points of pyproject's ``[project.scripts]``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .. import __version__, config
from .control import cancel_main, dashboard_main, drain_main, keygen_main, status_main
from .server import server_main
from .worker import worker_main

__all__ = ["main", "server_main", "worker_main"]

UMBRELLA = """\
usage: jobqueue COMMAND [ARGS...]

commands:
  server [ADDRESS]        run the broker (same as jobqueue-server)
  worker [ADDRESS]        run a worker (same as jobqueue-worker)
  run COMMAND [ARG...]    run a job (same as jq, for hosts where jq is the JSON tool)
  status                  show workers and jobs
  cancel JOB...           cancel queued jobs or signal running ones
  drain WORKER...         stop workers from taking new jobs
  keygen PATH             write a CURVE key pair (PATH and PATH.pub)
  dashboard               serve a live web dashboard (http://127.0.0.1:8321/)

'jobqueue COMMAND --help' tells more.
"""


def main(argv: list[str] | None = None) -> int:
    try:
        return _umbrella(sys.argv[1:] if argv is None else argv)
    except Exception as e:  # a bug outside a command's own guard
        return config.internal_error("jobqueue", e)


def _umbrella(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(UMBRELLA, end="")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"jobqueue {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "run":
        from ..jq import main as jq_main

        return jq_main(rest)
    commands: dict[str, Callable[[list[str]], int]] = {
        "server": lambda a: server_main(a, "jobqueue server"),
        "worker": lambda a: worker_main(a, "jobqueue worker"),
        "status": status_main,
        "cancel": cancel_main,
        "drain": drain_main,
        "keygen": keygen_main,
        "dashboard": dashboard_main,
    }
    if command not in commands:
        print(f"jobqueue: unknown command {command!r}\n\n{UMBRELLA}", end="", file=sys.stderr)
        return 2
    return commands[command](rest)
