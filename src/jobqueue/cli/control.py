"""The commands that talk to a running server or stand alone: ``jobqueue status``, ``cancel``,
``drain``, ``keygen`` and ``dashboard``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from .. import config
from ..resources import describe, format_amount, normalise
from .common import guard, version_option


def _request(address: str | None, message: Any, timeout: float, key: str | None, server_key: str | None) -> Any:
    """One request, one reply, without a session: over the same connection code (and
    transport choice) as every other peer."""
    import time

    from .. import protocol as p
    from ..connection import Connection, Refused, ServerLost
    from ..security import client_security

    endpoint = config.endpoint(config.server_address(address))
    conn = Connection(endpoint, None, p.decode_to_client, security=client_security(key, server_key))
    try:
        reply = conn.request(message, timeout, time.monotonic)
    except (ServerLost, Refused) as e:
        text = str(e)
        raise config.UsageError(text if isinstance(e, ServerLost) or text.startswith("authentication")
                                else f"the server refused: {text}") from None
    if isinstance(reply, p.Error):
        raise config.UsageError(f"the server refused: {reply.reason}")
    return reply


def _control_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-s", "--server", default=None,
                        help="server address (default $JOBQUEUE_SERVER, else localhost:3821)")
    parser.add_argument("--timeout", type=config.duration, default=5.0, help="wait this long for the server")
    parser.add_argument("--key", default=None, help="our secret key file (CURVE); $JOBQUEUE_KEY")
    parser.add_argument("--server-key", default=None, help="the server's public key file; $JOBQUEUE_SERVER_KEY")
    version_option(parser)
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

        from .. import protocol as p

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
                out["spawning"] = msgspec.to_builtins(reply.spawning)
            if show_jobs:
                out["jobs"] = msgspec.to_builtins(jobs)
            print(json.dumps(out, indent=2))
            return 0
        if show_workers:
            _print_table(["WORKER", "HOST", "STATE", "SLOTS", "JOBS", "SINCE", "TAGS", "RESOURCES (USED/TOTAL)",
                          "VERSION"], [
                [w.name, w.host, w.state, str(w.slots), ",".join(w.jobs) or "-", _age(w.since),
                 ",".join(w.tags) or "-", _usage(w.resources), w.software or "-"] for w in workers] + [
                [f"({s.spawn_id})", "-", "starting", "-", "-", _age(s.seconds), "spawned by --spawn", "-", "-"]
                for s in reply.spawning])
        if show_workers and show_jobs:
            print()
        if show_jobs:
            _print_table(["JOB", "STATE", "WORKER", "OWNER", "TIME", "PRIO", "TRY", "NEEDS", "COMMAND", "WHY"], [
                [j.job_id, j.state, j.worker or "-", j.owner or "-", _age(j.seconds), str(j.priority),
                 str(j.attempt), _needs(j.resources), _shorten(" ".join(j.argv)) if j.argv else "(not yours)",
                 j.why or ""]
                for j in jobs])
        return 0

    return guard("jobqueue status", body)


def cancel_main(argv: list[str]) -> int:
    parser = _control_parser("jobqueue cancel", "Cancel queued jobs, or signal running ones.")
    parser.add_argument("job_ids", nargs="+", metavar="JOB")
    parser.add_argument("--signal", default="TERM", help="signal for running jobs (default TERM)")
    args = parser.parse_args(argv)

    def body() -> int:
        from .. import protocol as p

        signum = _signal_number(args.signal)
        reply = _request(args.server, p.CancelRequest(p.PROTOCOL_VERSION, args.job_ids, signum), args.timeout,
                         args.key, args.server_key)
        return _report("jobqueue cancel", reply, "no job {} (finished already, or mistyped?)")

    return guard("jobqueue cancel", body)


def drain_main(argv: list[str]) -> int:
    parser = _control_parser("jobqueue drain", "Stop workers from taking new jobs; they exit when idle.")
    parser.add_argument("workers", nargs="+", metavar="WORKER")
    args = parser.parse_args(argv)

    def body() -> int:
        from .. import protocol as p

        reply = _request(args.server, p.DrainRequest(p.PROTOCOL_VERSION, args.workers), args.timeout,
                         args.key, args.server_key)
        return _report("jobqueue drain", reply, "no worker named {} (see jobqueue status --workers)")

    return guard("jobqueue drain", body)


def _report(prog: str, reply: Any, unknown: str) -> int:
    """A cancel's or drain's reply: one line per unknown name or refusal; exit 1 if any."""
    for name in reply.unknown:
        print(f"{prog}: {unknown.format(name)}", file=sys.stderr)
    for why in reply.refused:
        print(f"{prog}: {why}", file=sys.stderr)
    return 1 if reply.unknown or reply.refused else 0


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


def _usage(resources: list[Any]) -> str:
    """``cpus=2/8 mem=4G/32G gpus=1/4`` (a pool of 0 left out) from a worker's ResourceUse list."""
    return " ".join(f"{u.name}={format_amount(u.name, u.used)}/{format_amount(u.name, u.total)}"
                    for u in resources if u.total) or "-"


def _needs(resources: dict[str, int]) -> str:
    return describe(normalise(resources)) if resources else "cpus=1"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def keygen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jobqueue keygen", description="Write a CURVE key pair: the secret "
                                     "key at PATH (mode 0600) and the public key at PATH.pub.")
    parser.add_argument("path", metavar="PATH")
    version_option(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from ..security import keygen

        secret, public = keygen(args.path)
        print(f"secret key: {secret} (keep it private)\npublic key: {public}")
        return 0

    return guard("jobqueue keygen", body)


def dashboard_main(argv: list[str]) -> int:
    from ..dashboard import main as dashboard

    return dashboard(argv)
