"""``jobqueue-server`` (``jobqueue server``): its options, autoscaling (--spawn) and --dashboard included."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .. import config
from ..resources import RESERVE_AFTER, ResourceError, parse_declaration
from .common import guard, version_option


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
    version_option(parser)
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
    from ..autoscale import SpawnPolicy

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


def server_main(argv: list[str] | None = None, prog: str = "jobqueue-server") -> int:
    args = _server_parser(prog).parse_args(argv)
    return guard(prog, lambda: _run_server(args))


def _run_server(args: argparse.Namespace) -> int:
    from ..security import server_keys
    from ..server import Server, ServerOptions

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
