"""Defaults, addresses and durations shared by every command (kept import-light:
``jq`` loads it on every job)."""

from __future__ import annotations

import os

DEFAULT_PORT = 3821
DEFAULT_CLIENT_ADDRESS = f"localhost:{DEFAULT_PORT}"
DEFAULT_BIND_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
ENV_SERVER = "JOBQUEUE_SERVER"
#: CURVE keys of a client or worker (see jobqueue.security).
ENV_KEY = "JOBQUEUE_KEY"
ENV_SERVER_KEY = "JOBQUEUE_SERVER_KEY"
#: Given by the server's --spawn to the workers it starts (see jobqueue.autoscale).
ENV_SPAWN_ID = "JOBQUEUE_SPAWN_ID"
ENV_SPAWN_TAGS = "JOBQUEUE_SPAWN_TAGS"
ENV_SPAWN_RESOURCES = "JOBQUEUE_SPAWN_RESOURCES"
#: fcntl.F_SETPIPE_SZ (Linux), for Pythons whose fcntl lacks the name.
F_SETPIPE_SZ = 1031

#: Liveness defaults (ZeroMQ Guide, Paranoid Pirate): a heartbeat a second, a
#: peer is lost after ``LIVENESS`` silent intervals.  The server's values win:
#: it sends them to every peer in its Welcome.
HEARTBEAT = 1.0
LIVENESS = 5
#: How long jq waits for a first answer from the server.
CONNECT_TIMEOUT = 10.0
#: How long a connected peer keeps trying when the server went away.
SERVER_GRACE = 600.0
#: Grace between SIGTERM and SIGKILL when the worker stops a job.
KILL_GRACE = 3.0


class UsageError(Exception):
    """Bad command-line input; the message says what to do."""


def server_address(given: str | None) -> str:
    """The address to connect to: the option, else $JOBQUEUE_SERVER, else the default."""
    return given or os.environ.get(ENV_SERVER) or DEFAULT_CLIENT_ADDRESS


def endpoint(address: str, *, bind: bool = False) -> str:
    """``HOST:PORT`` or a ZeroMQ endpoint (``tcp://``, ``ipc://``) -> endpoint."""
    if "://" in address:
        if not address.startswith(("tcp://", "ipc://")):
            raise UsageError(f"unsupported address {address!r}: use HOST:PORT, tcp://HOST:PORT or ipc:///PATH")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad address {address!r}: expected HOST:PORT (e.g. localhost:{DEFAULT_PORT})")
    host = host or ("127.0.0.1" if bind else "localhost")
    if bind and host == "localhost":
        host = "127.0.0.1"
    if bind and host in ("0.0.0.0", ""):
        host = "*"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


_DURATION = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h``, ``250ms`` -> seconds."""
    import re  # here: only duration options need it

    match = re.match(_DURATION, text)
    if not match:
        raise UsageError(f"bad duration {text!r}: use a number of seconds or e.g. 90s, 10m, 2h")
    return float(match.group(1)) * _UNIT[match.group(2)]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return duration(value) if value else default


def open_missing_std_fds() -> list[int]:
    """Put /dev/null on a closed fd 0, 1 or 2 (``jq cmd <&-``), before our own pipes
    and sockets could take those numbers and be mistaken for stdio (jq), or be
    handed to a job as its stdio (the worker).  Returns the fds that were closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            if os.open(os.devnull, os.O_RDWR) != fd:  # the lowest free number: this one
                raise RuntimeError(f"could not put /dev/null on fd {fd}") from None
    return closed


#: Set to 1 for a traceback with an internal error.
ENV_DEBUG = "JOBQUEUE_DEBUG"


def internal_error(prog: str, error: BaseException) -> int:
    """A bug: say so in one line (the traceback only with $JOBQUEUE_DEBUG=1); exit 255."""
    import sys

    if os.environ.get(ENV_DEBUG) == "1":
        import traceback

        traceback.print_exception(error)
    hint = "" if os.environ.get(ENV_DEBUG) == "1" else f" ({ENV_DEBUG}=1 shows where)"
    try:
        print(f"{prog}: internal error: {type(error).__name__}: {error}{hint}; please report it",
              file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    return 255


def guard_threads(prog: str) -> None:
    """An exception that ends a thread of ours is an internal error too: one line, no traceback."""
    import threading

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        internal_error(prog, args.exc_value)

    threading.excepthook = hook
