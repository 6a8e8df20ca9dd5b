"""``jobqueue-worker`` (``jobqueue worker``): its options, resources (-j, --cpus, --mem, --gpus,
--resource) and staging cache."""

from __future__ import annotations

import argparse
import os
import socket

from .. import config
from ..resources import Pool, ResourceError, parse_declaration, parse_gpus, parse_size, worker_pools
from .common import guard, version_option


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
                       help="keep a staged job's private directory after it ended (for debugging; the log "
                            "says where: workdir-kept)")
    group.add_argument("--parked-dirs", metavar="N", type=int, default=None,
                       help="finished jobs' directories kept (within --cache-size) for the next job of the same "
                            "or a similar tree (default: 2, or -j if more; 0: a fresh directory for every job)")
    parser.add_argument("--key", default=None, help="this worker's secret key file (CURVE); $JOBQUEUE_KEY")
    parser.add_argument("--server-key", default=None, help="the server's public key file; $JOBQUEUE_SERVER_KEY")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    version_option(parser)
    return parser


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
    return guard(prog, lambda: _run_worker(args))


def _run_worker(args: argparse.Namespace) -> int:
    from ..confine import ConfineError
    from ..security import client_security
    from ..worker import Worker, WorkerOptions

    pools, slots = _worker_resources(args)
    if args.parked_dirs is not None and args.parked_dirs < 0:
        raise config.UsageError("--parked-dirs must be 0 or more")
    options = WorkerOptions(
        endpoint=config.endpoint(config.server_address(args.address)),
        name=args.name or f"{socket.gethostname()}:{os.getpid()}",
        slots=slots, tags=args.tag, max_jobs=1 if args.once else args.max_jobs,
        idle_timeout=args.idle_timeout, kill_grace=args.kill_grace, grace=args.server_grace,
        security=client_security(args.key, args.server_key), log_format=args.log_format,
        pools=pools, bind_cpus=args.bind_cpus, enforce_mem=args.enforce_mem,
        cache_dir=args.cache_dir, cache_size=args.cache_size, keep_workdir=args.keep_workdir,
        parked_dirs=args.parked_dirs,
    )
    try:
        worker = Worker(options)
    except ConfineError as e:
        raise config.UsageError(str(e)) from None
    return worker.run()


def _worker_resources(args: argparse.Namespace) -> tuple[list[Pool], int]:
    """The worker's pools and slots from -j, --cpus, --mem, --gpus and --resource."""
    from ..confine import detect_gpus, machine_memory

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
