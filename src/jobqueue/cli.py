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
from .resources import (
    RESERVE_AFTER,
    Pool,
    ResourceError,
    describe,
    format_amount,
    normalise,
    parse_declaration,
    parse_gpus,
    parse_size,
    worker_pools,
)

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
    parser.add_argument("--reserve-after", type=config.duration, default=RESERVE_AFTER,
                        help="a job that does not fit may be overtaken by jobs that do for this long; then "
                             "the next worker that could run it is held for it (default 30s)")
    parser.add_argument("--key", default=None, help="the server's secret key file (CURVE; see jobqueue keygen)")
    parser.add_argument("--clients", metavar="KEYS", default=None,
                        help="public keys allowed to submit jobs: a directory of *.pub files or one file, "
                             "one key per line")
    parser.add_argument("--workers", metavar="KEYS", default=None,
                        help="public keys allowed to run jobs (same forms as --clients)")
    parser.add_argument("--admins", metavar="KEYS", default=None,
                        help="client keys that also see and cancel every job and drain workers "
                             "(same forms as --clients)")
    parser.add_argument("--fair-share", action="store_true",
                        help="within a priority, give the next free slot to the owner with the fewest running jobs")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without CURVE keys (trusted networks only)")
    parser.add_argument("--ipc-mode", metavar="OCTAL", type=_octal_mode, default=0o700,
                        help="permissions of an ipc:// socket file (default 700: only this user may connect)")
    _spawn_arguments(parser)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--metrics", metavar="ADDRESS", default=None,
                        help="serve Prometheus metrics on HOST:PORT (:PORT: every interface)")
    _dashboard_arguments(parser)
    _common(parser)
    return parser


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dashboard", "start 'jobqueue dashboard' alongside, stopped with the server")
    group.add_argument("--dashboard", metavar="HOST:PORT", default=None,
                       help="serve the web dashboard there (e.g. 127.0.0.1:8321)")
    group.add_argument("--dashboard-key", metavar="FILE", default=None,
                       help="with CURVE: the dashboard's secret key (a key listed in --clients)")
    group.add_argument("--dashboard-token-file", metavar="FILE", default=None,
                       help="the dashboard's --token-file (needed for a non-loopback address or actions)")
    group.add_argument("--dashboard-actions", action="store_true",
                       help="let the dashboard cancel jobs and drain workers (needs --dashboard-token-file)")


def _dashboard_command(args: argparse.Namespace) -> list[str] | None:
    """The dashboard's command line (without the server's address and key), or None."""
    if args.dashboard is None:
        return None
    if args.key and not args.dashboard_key:
        raise config.UsageError("--dashboard with CURVE keys needs --dashboard-key: a client key listed in "
                                "--clients, as the dashboard is a client of the server")
    command = [sys.executable, "-m", "jobqueue.cli", "dashboard", "--listen", args.dashboard,
               "--parent-pid", str(os.getpid())]
    if args.dashboard_token_file:
        command += ["--token-file", args.dashboard_token_file]
    if args.dashboard_actions:
        command.append("--actions")
    if args.dashboard_key:
        command += ["--key", args.dashboard_key]
    return command


def _spawn_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("autoscaling", "start workers when jobs wait that no worker can take")
    group.add_argument("--spawn", metavar="COMMAND", default=None,
                       help="run COMMAND (with sh -c, in the background) to add a worker, e.g. "
                            "'sbatch examples/slurm/worker.sbatch'; it gets $JOBQUEUE_SERVER, "
                            "$JOBQUEUE_SPAWN_TAGS and $JOBQUEUE_SPAWN_ID (the worker reads the last itself)")
    group.add_argument("--spawn-max", metavar="N", type=int, default=4,
                       help="at most N spawned workers starting or connected at once (default 4)")
    group.add_argument("--spawn-tags", metavar="TAG[,TAG...]", action="append", default=[],
                       help="tags the spawned workers advertise (repeatable): only jobs whose tags are all "
                            "among them make the server spawn (default: untagged jobs only)")
    group.add_argument("--spawn-timeout", metavar="DURATION", type=config.duration, default=300.0,
                       help="a spawned worker not connected after this long counts as failed, and spawning "
                            "backs off (default 5m; allow for the batch system's queueing)")
    group.add_argument("--spawn-resources", metavar="'NAME=VALUE ...'", action="append", default=[],
                       help="what a spawned worker has, e.g. 'cpus=16 mem=64G gpus=4' (given to the command "
                            "as $JOBQUEUE_SPAWN_RESOURCES): only jobs that fit it make the server spawn "
                            "(default: only jobs that ask for one CPU)")
    group.add_argument("--spawn-address", metavar="ADDRESS", default=None,
                       help="the address spawned workers connect to (default: the bound address)")


def _spawn_policy(args: argparse.Namespace) -> Any:
    """The autoscaling policy from the --spawn options (None without --spawn)."""
    if args.spawn is None:
        return None
    from .autoscale import SpawnPolicy

    if not args.spawn.strip():
        raise config.UsageError("--spawn needs a command, e.g. --spawn 'jobqueue-worker --once'")
    if args.spawn_max < 1:
        raise config.UsageError(f"--spawn-max must be at least 1, got {args.spawn_max}")
    if args.spawn_timeout <= 0:
        raise config.UsageError("--spawn-timeout must be positive")
    tags = frozenset(t for tag in args.spawn_tags for t in tag.split(",") if t)
    try:
        pools = tuple(parse_declaration(word) for text in args.spawn_resources for word in text.split())
    except ResourceError as e:
        raise config.UsageError(f"--spawn-resources: {e}") from None
    return SpawnPolicy(args.spawn, max_workers=args.spawn_max, tags=tags, timeout=args.spawn_timeout,
                       resources=pools)


def _worker_parser(prog: str = "jobqueue-worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A jobqueue worker: connects out to the server "
                                     "and runs the jobs it pulls.")
    parser.add_argument("address", nargs="?", default=None,
                        help="server address (default $JOBQUEUE_SERVER, else localhost:3821)")
    parser.add_argument("-j", "--jobs", default=None,
                        help="jobs run at once (slots); 0 or 'auto' = one per CPU (default 1, or --cpus)")
    parser.add_argument("--cpus", metavar="N", default=None,
                        help="its CPUs (default: the -j slots; with --mem, --gpus or --resource and no -j: "
                             "the machine's)")
    parser.add_argument("--mem", metavar="SIZE", default=None, help="its memory, e.g. 64G (default: the machine's)")
    parser.add_argument("--gpus", metavar="auto|LIST|N", default=None,
                        help="its GPUs: auto ($CUDA_VISIBLE_DEVICES, else nvidia-smi -L), 0,1,2,3, or N")
    parser.add_argument("--resource", metavar="NAME=COUNT|NAME=a,b", action="append", default=[],
                        help="a named resource: an amount, or distinct items (repeatable)")
    parser.add_argument("--bind-cpus", action="store_true", help="pin each job to as many CPUs as it asked for")
    parser.add_argument("--enforce-mem", action="store_true",
                        help="kill a job that uses more memory than it asked for (a memory cgroup per job)")
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
    group = parser.add_argument_group("staging (jq --stage)")
    group.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="where staged files are cached and staged jobs run (default: "
                            "$TMPDIR/jobqueue-UID/cache); one worker process per directory")
    group.add_argument("--cache-size", metavar="SIZE", type=_size, default=10 << 30,
                       help="bound of the cache (bytes, or with K, M, G, T; default 10G); least recently used "
                            "files go first, never those of a queued or running job")
    group.add_argument("--keep-workdir", action="store_true",
                       help="keep a staged job's private directory after it ended (for debugging)")
    parser.add_argument("--key", default=None, help="this worker's secret key file (CURVE); $JOBQUEUE_KEY")
    parser.add_argument("--server-key", default=None, help="the server's public key file; $JOBQUEUE_SERVER_KEY")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    _common(parser)
    return parser


def server_main(argv: list[str] | None = None, prog: str = "jobqueue-server") -> int:
    args = _server_parser(prog).parse_args(argv)
    return _guard(prog, lambda: _run_server(args))


def _run_server(args: argparse.Namespace) -> int:
    from .security import server_keys
    from .server import Server, ServerOptions

    if args.heartbeat <= 0 or args.liveness < 1:
        raise config.UsageError("--heartbeat must be positive and --liveness at least 1")
    options = ServerOptions(config.endpoint(args.address, bind=True), args.heartbeat, args.liveness,
                            args.log_format, args.restart_hold, reserve_after=args.reserve_after,
                            ipc_mode=args.ipc_mode,
                            keys=server_keys(args.key, args.clients, args.workers, args.admins, args.fair_share),
                            insecure=args.insecure,
                            spawn=_spawn_policy(args), spawn_address=_spawn_address(args.spawn_address),
                            metrics=args.metrics, dashboard=_dashboard_command(args),
                            fair_share=args.fair_share)
    return Server(options).run()


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"expected permissions in octal such as 700 or 770, got {text!r}")
    return mode


def _spawn_address(address: str | None) -> str | None:
    return config.endpoint(address) if address else None


def _size(text: str) -> int:
    """A size in bytes: 1000000, 500K, 200M, 10G, 1T (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().removesuffix("B").removesuffix("I"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 10G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value)


def worker_main(argv: list[str] | None = None, prog: str = "jobqueue-worker") -> int:
    args = _worker_parser(prog).parse_args(argv)
    return _guard(prog, lambda: _run_worker(args))


def _run_worker(args: argparse.Namespace) -> int:
    from .confine import ConfineError
    from .security import client_security
    from .worker import Worker, WorkerOptions

    pools, slots = _worker_resources(args)
    options = WorkerOptions(
        endpoint=config.endpoint(config.server_address(args.address)),
        name=args.name or f"{socket.gethostname()}:{os.getpid()}",
        slots=slots, tags=args.tag, max_jobs=1 if args.once else args.max_jobs,
        idle_timeout=args.idle_timeout, kill_grace=args.kill_grace, grace=args.server_grace,
        security=client_security(args.key, args.server_key), log_format=args.log_format,
        pools=pools, bind_cpus=args.bind_cpus, enforce_mem=args.enforce_mem,
        cache_dir=args.cache_dir, cache_size=args.cache_size, keep_workdir=args.keep_workdir,
    )
    try:
        worker = Worker(options)
    except ConfineError as e:
        raise config.UsageError(str(e)) from None
    return worker.run()


def _worker_resources(args: argparse.Namespace) -> tuple[list[Pool], int]:
    """The worker's pools and slots from -j, --cpus, --mem, --gpus and --resource."""
    from .confine import detect_gpus, machine_memory

    try:
        declared = [parse_declaration(text) for text in args.resource]  # may say cpus= and mem= too
        named = {pool.name: pool.total for pool in declared}
        cpus = named.get("cpus") if args.cpus is None else _positive(args.cpus, "--cpus")
        if args.jobs is None:
            # The resource form without -j or --cpus: the machine's CPUs, as memory is the machine's.
            declared_any = args.mem is not None or args.gpus is not None or args.resource
            slots = cpus or ((os.cpu_count() or 1) if declared_any else 1)
        else:
            slots = os.cpu_count() or 1 if args.jobs in ("0", "auto") else _positive(args.jobs, "-j/--jobs")
        if slots < 1 or cpus == 0:
            raise config.UsageError("-j/--jobs and --cpus must be at least 1")
        mem = parse_size(args.mem) if args.mem is not None else named.get("mem") or machine_memory()
        gpus = None if args.gpus is None else parse_gpus(args.gpus, detect_gpus)
        return worker_pools(cpus or slots, mem, gpus, [p for p in declared if p.name not in ("cpus", "mem")]), slots
    except ResourceError as e:
        raise config.UsageError(str(e)) from None


def _positive(text: str, name: str) -> int:
    if not text.isdigit():
        raise config.UsageError(f"{name} takes a whole number or 'auto', got {text!r}")
    return int(text)


def _guard(prog: str, body: Callable[[], int]) -> int:
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


# --- jobqueue status / cancel / drain -------------------------------------------------------


def _request(address: str | None, message: Any, timeout: float, key: str | None, server_key: str | None) -> Any:
    """One request, one reply, without a session: over the same connection code (and
    transport choice) as every other peer."""
    import time

    from . import protocol as p
    from .connection import Connection, Refused, ServerLost
    from .security import client_security

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
    _common(parser)
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
        for why in reply.refused:
            print(f"jobqueue cancel: {why}", file=sys.stderr)
        return 1 if reply.unknown or reply.refused else 0

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
        for why in reply.refused:
            print(f"jobqueue drain: {why}", file=sys.stderr)
        return 1 if reply.unknown or reply.refused else 0

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
        from .jq import main as jq_main

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


def keygen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jobqueue keygen", description="Write a CURVE key pair: the secret "
                                     "key at PATH (mode 0600) and the public key at PATH.pub.")
    parser.add_argument("path", metavar="PATH")
    _common(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from .security import keygen

        secret, public = keygen(args.path)
        print(f"secret key: {secret} (keep it private)\npublic key: {public}")
        return 0

    return _guard("jobqueue keygen", body)


def dashboard_main(argv: list[str]) -> int:
    from .dashboard import main as dashboard

    return dashboard(argv)


if __name__ == "__main__":  # the server starts its --dashboard as python -m jobqueue.cli dashboard
    sys.exit(main())
