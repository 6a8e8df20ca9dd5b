"""Command lines of ``jobqueue-server``, ``jobqueue-worker`` and ``jobqueue``
(``jq`` lives in :mod:`jobqueue.jq`, kept lean for its start-up)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from . import __version__, config

EXIT_ERROR = 255


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s (jobqueue) {__version__}")


def _server_parser(prog: str = "jobqueue-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The jobqueue broker: workers and jq connect to it.")
    parser.add_argument("address", nargs="?", default=config.DEFAULT_BIND_ADDRESS,
                        help=f"HOST:PORT or ZeroMQ endpoint to bind (default {config.DEFAULT_BIND_ADDRESS})")
    parser.add_argument("--heartbeat", type=config.duration, default=config.HEARTBEAT,
                        help="heartbeat interval every peer uses (default 1s)")
    parser.add_argument("--liveness", type=int, default=config.LIVENESS,
                        help="a peer silent for this many heartbeats is lost (default 5)")
    parser.add_argument("--restart-hold", type=config.duration, default=None,
                        help="after start, wait this long before dispatching, so that after a restart "
                             "workers and clients re-announce their jobs first (default 2 heartbeats)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    _common(parser)
    return parser


def _worker_parser(prog: str = "jobqueue-worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A jobqueue worker: connects out to the server "
                                     "and runs the jobs it pulls.")
    parser.add_argument("address", nargs="?", default=None,
                        help="server address (default $JOBQUEUE_SERVER, else localhost:3821)")
    parser.add_argument("-j", "--jobs", default="1",
                        help="jobs run at once (slots); 0 or 'auto' = one per CPU (default 1)")
    parser.add_argument("--tag", action="append", default=[], help="advertise this tag (repeatable)")
    parser.add_argument("--name", default=None, help="worker name (default HOSTNAME:PID)")
    parser.add_argument("--max-jobs", type=int, default=0, help="exit after running N jobs")
    parser.add_argument("--once", action="store_true", help="exit after one job (--max-jobs 1)")
    parser.add_argument("--idle-timeout", type=config.duration, default=0.0,
                        help="exit after being idle this long")
    parser.add_argument("--kill-grace", type=config.duration, default=config.KILL_GRACE,
                        help="SIGKILL a job this long after SIGTERM (default 3s)")
    parser.add_argument("--server-grace", type=config.duration, default=config.SERVER_GRACE,
                        help="give up after the server is unreachable this long (default 10m)")
    parser.add_argument("--key", default=None, help="this worker's secret key file (CURVE); $JOBQUEUE_KEY")
    parser.add_argument("--server-key", default=None, help="the server's public key file; $JOBQUEUE_SERVER_KEY")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    _common(parser)
    return parser


def server_main(argv: list[str] | None = None, prog: str = "jobqueue-server") -> int:
    args = _server_parser(prog).parse_args(argv)
    return _guard(prog, lambda: _run_server(args))


def _run_server(args: argparse.Namespace) -> int:
    from .server import Server, ServerOptions

    if args.heartbeat <= 0 or args.liveness < 1:
        raise config.UsageError("--heartbeat must be positive and --liveness at least 1")
    options = ServerOptions(config.endpoint(args.address, bind=True), args.heartbeat, args.liveness,
                            args.log_format, args.restart_hold)
    return Server(options).run()


def worker_main(argv: list[str] | None = None, prog: str = "jobqueue-worker") -> int:
    args = _worker_parser(prog).parse_args(argv)
    return _guard(prog, lambda: _run_worker(args))


def _run_worker(args: argparse.Namespace) -> int:
    from .security import client_security
    from .worker import Worker, WorkerOptions

    slots = os.cpu_count() or 1 if args.jobs in ("0", "auto") else _positive(args.jobs, "-j/--jobs")
    options = WorkerOptions(
        endpoint=config.endpoint(config.server_address(args.address)),
        name=args.name or f"{socket.gethostname()}:{os.getpid()}",
        slots=slots, tags=args.tag, max_jobs=1 if args.once else args.max_jobs,
        idle_timeout=args.idle_timeout, kill_grace=args.kill_grace, grace=args.server_grace,
        security=client_security(args.key, args.server_key), log_format=args.log_format,
    )
    return Worker(options).run()


def _positive(text: str, name: str) -> int:
    if not text.isdigit():
        raise config.UsageError(f"{name} takes a whole number or 'auto', got {text!r}")
    return int(text)


def _guard(prog: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except config.UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # zmq errors (address in use, bad endpoint) end up here
        if type(e).__module__.startswith("zmq"):
            print(f"{prog}: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise


# --- jobqueue status / cancel / drain -------------------------------------------------------


def _request(address: str | None, message: Any, timeout: float, key: str | None, server_key: str | None) -> Any:
    """One request, one reply, without a session."""
    import zmq

    from . import protocol as p
    from .security import client_security

    endpoint = config.endpoint(config.server_address(address))
    security = client_security(key, server_key)
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if security is not None:
        security.apply_client(sock)
    sock.connect(endpoint)
    try:
        sock.send(p.encode(message))
        if not sock.poll(int(timeout * 1000)):
            raise config.UsageError(f"no answer from the server at {endpoint} in {timeout:g}s: "
                                    "is jobqueue-server running there?")
        reply = p.decode_to_client(sock.recv())
    finally:
        sock.close()
    if isinstance(reply, (p.Refused, p.Error)):
        raise config.UsageError(f"the server refused: {reply.reason}")
    return reply


def _control_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-s", "--server", default=None,
                        help="server address (default $JOBQUEUE_SERVER, else localhost:3821)")
    parser.add_argument("--timeout", type=config.duration, default=5.0, help="wait this long for the server")
    parser.add_argument("--key", default=None)
    parser.add_argument("--server-key", default=None)
    return parser


def status_main(argv: list[str]) -> int:
    parser = _control_parser("jobqueue status", "Show the server's workers and jobs.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--workers", action="store_true", help="only the workers")
    parser.add_argument("--jobs", action="store_true", help="only the jobs")
    parser.add_argument("--tag", action="append", default=[], help="only workers/jobs with this tag")
    args = parser.parse_args(argv)

    def body() -> int:
        import msgspec

        from . import protocol as p

        reply = _request(args.server, p.StatusRequest(p.PROTOCOL_VERSION), args.timeout, args.key,
                         args.server_key)
        wanted = set(args.tag)
        workers = [w for w in reply.workers if wanted <= set(w.tags)]
        jobs = [j for j in reply.jobs if wanted <= set(j.tags)]
        show_workers = args.workers or not args.jobs
        show_jobs = args.jobs or not args.workers
        if args.json:
            out: dict[str, Any] = {"server": reply.server_id, "version": reply.software}
            if show_workers:
                out["workers"] = msgspec.to_builtins(workers)
            if show_jobs:
                out["jobs"] = msgspec.to_builtins(jobs)
            print(json.dumps(out, indent=2))
            return 0
        if show_workers:
            _print_table(["WORKER", "HOST", "STATE", "SLOTS", "JOBS", "SINCE", "TAGS"], [
                [w.name, w.host, w.state, str(w.slots), ",".join(w.jobs) or "-", _age(w.since),
                 ",".join(w.tags) or "-"] for w in workers])
        if show_workers and show_jobs:
            print()
        if show_jobs:
            _print_table(["JOB", "STATE", "WORKER", "TIME", "PRIO", "TRY", "COMMAND", "WHY"], [
                [j.job_id, j.state, j.worker or "-", _age(j.seconds), str(j.priority), str(j.attempt),
                 _shorten(" ".join(j.argv)), j.why or ""] for j in jobs])
        return 0

    return _guard("jobqueue status", body)


def cancel_main(argv: list[str]) -> int:
    parser = _control_parser("jobqueue cancel", "Cancel queued jobs, or signal running ones.")
    parser.add_argument("job_ids", nargs="+", metavar="JOB")
    parser.add_argument("--signal", default="TERM", help="signal for running jobs (default TERM)")
    args = parser.parse_args(argv)

    def body() -> int:
        from . import protocol as p

        signum = _signal_number(args.signal)
        reply = _request(args.server, p.CancelRequest(p.PROTOCOL_VERSION, args.job_ids, signum), args.timeout,
                         args.key, args.server_key)
        for job_id in reply.unknown:
            print(f"jobqueue cancel: no job {job_id} (finished already, or mistyped?)", file=sys.stderr)
        return 1 if reply.unknown else 0

    return _guard("jobqueue cancel", body)


def drain_main(argv: list[str]) -> int:
    parser = _control_parser("jobqueue drain", "Stop workers from taking new jobs; they exit when idle.")
    parser.add_argument("workers", nargs="+", metavar="WORKER")
    args = parser.parse_args(argv)

    def body() -> int:
        from . import protocol as p

        reply = _request(args.server, p.DrainRequest(p.PROTOCOL_VERSION, args.workers), args.timeout,
                         args.key, args.server_key)
        for name in reply.unknown:
            print(f"jobqueue drain: no worker named {name} (see jobqueue status --workers)", file=sys.stderr)
        return 1 if reply.unknown else 0

    return _guard("jobqueue drain", body)


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        raise config.UsageError(f"unknown signal {name!r}") from None


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


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

'jobqueue COMMAND --help' tells more.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(UMBRELLA, end="")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"jobqueue {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "run":
        from .jq import main as jq_main

        return jq_main(rest)
    commands: dict[str, Callable[[list[str]], int]] = {
        "server": lambda a: server_main(a, "jobqueue server"),
        "worker": lambda a: worker_main(a, "jobqueue worker"),
        "status": status_main,
        "cancel": cancel_main,
        "drain": drain_main,
        "keygen": keygen_main,
    }
    if command not in commands:
        print(f"jobqueue: unknown command {command!r}\n\n{UMBRELLA}", end="", file=sys.stderr)
        return 2
    return commands[command](rest)


def keygen_main(argv: list[str]) -> int:
    print("jobqueue keygen: not available yet", file=sys.stderr)
    return EXIT_ERROR


