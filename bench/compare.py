#!/usr/bin/env python3
"""Revisions of jobqueue side by side, in the same minutes: is one slower than another?

usage: bench/compare.py REV [REV ...] [--rounds N] [--jobs N] [--stream-mib N]
                        [--latency-runs N] [--only latency,throughput,streaming] [--output FILE]

Each REV (anything ``git archive`` takes, or ``WORKTREE`` for the work tree's
uncommitted ``src`` and ``bin``) is unpacked under ``bench/.work/compare/`` and
run from this checkout's venv with ``PYTHONPATH`` pointing at its ``src``: a
server and a 2-slot worker of its own on a loopback port; its jq through its own
launcher (``bin/jq``, run by the venv's python).  Then, round after round, the
revisions take turns (their order rotates) at:

- latency: ``jq true`` and ``jq echo hello`` (a job with output: jq's writer
  path), ``--latency-runs`` each per revision and round;
- throughput: one Executor burst of ``--jobs`` trivial jobs per revision, and
  one ``seq N | xargs -n1 -P2 true`` per round, the reference each burst is
  divided by (the host's load drifts between rounds far more than within one);
  the CPU each revision's server, worker, jobs and Executor process spent per job;
- streaming: ``head -c SIZE /dev/zero | jq cat > /dev/null``.

It prints a Markdown report: medians and ranges, and each revision's median
per-round ratio to the first revision.  ``bench/run`` compares jobqueue with
other tools, one revision at a time; this compares revisions with each other
(issue 11: "no regression").  Revisions from session 2 (196a932) on run here;
the venv must hold every package the oldest of them needs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HELPERS, REPO, Processes, cpu_times, default_signals, free_port, timed_run, wait_for  # noqa: E402

WORKTREE = "WORKTREE"
SCENARIOS = ("latency", "throughput", "streaming")


@dataclass
class Revision:
    """One revision's code and its cluster."""

    name: str  # as given
    commit: str  # the short hash (or WORKTREE)
    src: Path
    jq: list[str] = field(default_factory=list)  # how to run its jq: its own launcher (bin/jq), by this venv's python
    address: str = ""
    env: dict[str, str] = field(default_factory=dict)
    server_pid: int = 0
    worker_pid: int = 0
    latency: list[float] = field(default_factory=list)  # seconds per jq true
    echo_latency: list[float] = field(default_factory=list)  # seconds per jq echo hello (a job with output)
    throughput: list[float] = field(default_factory=list)  # jobs/s per burst
    cpu: list[tuple[float, float, float, float]] = field(default_factory=list)  # µs/job: server, worker, jobs, Executor
    streaming: list[float] = field(default_factory=list)  # MB/s per run


def unpack(rev: str, root: Path) -> Revision:
    """The revision's ``src`` under ``root`` (byte-compiled: with PYTHONDONTWRITEBYTECODE
    set, every jq would compile it again)."""
    if rev == WORKTREE:
        commit, dest = WORKTREE, root / "worktree"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(REPO / "bin", dest / "bin")
    else:
        found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", "--short",
                                f"{rev}^{{commit}}"], capture_output=True, text=True)
        if found.returncode != 0:
            raise SystemExit(f"bench/compare.py: {rev!r} is not a commit of {REPO} (nor {WORKTREE})")
        commit = found.stdout.strip()
        dest = root / commit
        if not (dest / "bin" / "jq").is_file():  # (older copies hold src only)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "src", "bin"],
                                     capture_output=True, check=True).stdout
            tmp = root / f".{commit}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(tmp, filter="data")
            shutil.rmtree(dest, ignore_errors=True)  # an older copy, of src only
            tmp.rename(dest)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
    # Its own launcher: what bin/jq does before jobqueue.jq loads is part of the revision.
    return Revision(rev, commit, dest / "src", [sys.executable, str(dest / "bin" / "jq")])


def start(rev: Revision, procs: Processes, bin_dir: Path) -> None:
    rev.address = f"tcp://127.0.0.1:{free_port()}"
    rev.env = dict(os.environ, PYTHONPATH=str(rev.src))
    server = procs.start([str(bin_dir / "jobqueue-server"), rev.address, "--heartbeat", "1"],
                         log=f"{rev.commit}-server", env=rev.env)
    worker = procs.start([str(bin_dir / "jobqueue-worker"), rev.address, "-j", "2"],
                         log=f"{rev.commit}-worker", env=rev.env)
    rev.server_pid, rev.worker_pid = server.pid, worker.pid

    def answers() -> bool:
        done = subprocess.run([*rev.jq, "-s", rev.address, "true"], env=rev.env,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        return done.returncode == 0

    wait_for(answers, 30, f"{rev.name}'s server and worker to run a job")


def time_burst(rev: Revision, bin_dir: Path, jobs: int) -> None:
    server0, (worker0, jobs0) = cpu_times(rev.server_pid)[0], cpu_times(rev.worker_pid)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([str(bin_dir / "python"), str(HELPERS / "executor_burst.py"), rev.address, str(jobs)],
                          env=rev.env, capture_output=True, check=True, timeout=600)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server1, (worker1, jobs1) = cpu_times(rev.server_pid)[0], cpu_times(rev.worker_pid)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"{rev.name}: {result['failed']} of {jobs} jobs failed")
    rev.throughput.append(jobs / result["seconds"])
    executor = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime)
    per_job = 1e6 / jobs
    rev.cpu.append(((server1 - server0) * per_job, (worker1 - worker0) * per_job, (jobs1 - jobs0) * per_job,
                    executor * per_job))


def time_xargs(jobs: int) -> float:
    return jobs / timed_run(["bash", "-c", f"seq {jobs} | xargs -n1 -P2 true"], 600)


def time_stream(rev: Revision, bin_dir: Path, size: int) -> None:
    seconds = timed_run(["bash", "-o", "pipefail", "-c", f'head -c {size} /dev/zero | "$0" "$1" -s "$2" cat',
                         *rev.jq, rev.address], 600, rev.env)
    rev.streaming.append(size / seconds / 1e6)


# --- the report ---------------------------------------------------------------------------------


def _paired(values: list[float], base: list[float]) -> str:
    ratios = [a / b for a, b in zip(values, base) if b]
    return f"{statistics.median(ratios):.3f}" if ratios else "-"


def _spread(values: list[float], scale: float = 1.0, digits: int = 0) -> tuple[str, str]:
    return (f"{statistics.median(values) * scale:,.{digits}f}",
            f"{min(values) * scale:,.{digits}f}-{max(values) * scale:,.{digits}f}")


def report(revs: list[Revision], xargs: list[float], args: argparse.Namespace) -> str:
    base = revs[0]
    load = os.getloadavg()
    lines = [f"# bench/compare.py, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"`bench/compare.py {' '.join(r.name for r in revs)} --rounds {args.rounds}` on {os.cpu_count()} CPUs "
             f"(load average at the end {load[0]:.2f} {load[1]:.2f}). Ratios: the median of each round's own "
             f"ratio to {base.name} ({base.commit}); for throughput, of each burst to the same round's "
             "`xargs -P2 true`.", ""]
    for title, times in (("jq true", attrgetter("latency")), ("jq echo hello", attrgetter("echo_latency"))):
        if not times(base):
            continue
        lines += [f"## `{title}` (ms; lower is better)", "", "| revision | median | range | runs | / first (paired) |",
                  "|---|---|---|---|---|"]
        for r in revs:
            median, spread = _spread(times(r), 1e3, 2)
            lines.append(f"| {r.name} ({r.commit}) | {median} | {spread} | {len(times(r))} | "
                         f"{_paired(times(r), times(base))} |")
        lines.append("")
    if base.throughput:
        lines += [f"## Executor, {args.jobs} × `true` on 2 slots (jobs/s; higher is better)", "",
                  "| revision | median | range | / xargs -P2 (paired) | / first (paired) "
                  "| CPU µs per job: server, worker, jobs, Executor (medians) |", "|---|---|---|---|---|---|"]
        for r in revs:
            median, spread = _spread(r.throughput)
            cpu = ", ".join(f"{statistics.median(c[i] for c in r.cpu):.0f}" for i in range(4))
            lines.append(f"| {r.name} ({r.commit}) | {median} | {spread} | {_paired(r.throughput, xargs)} | "
                         f"{_paired(r.throughput, base.throughput)} | {cpu} |")
        median, spread = _spread(xargs)
        lines += [f"| `xargs -n1 -P2 true` | {median} | {spread} | 1 | | |", ""]
    if base.streaming:
        lines += [f"## `head -c {args.stream_mib} MiB /dev/zero | jq cat` (MB/s; higher is better)", "",
                  "| revision | median | range | / first (paired) |", "|---|---|---|---|"]
        for r in revs:
            median, spread = _spread(r.streaming)
            lines.append(f"| {r.name} ({r.commit}) | {median} | {spread} | {_paired(r.streaming, base.streaming)} |")
        lines.append("")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", metavar="REV", help=f"a git revision, or {WORKTREE}")
    parser.add_argument("--rounds", type=_positive, default=6)
    parser.add_argument("--jobs", type=_positive, default=2000, help="jobs per Executor burst")
    parser.add_argument("--latency-runs", type=_positive, default=20, help="jq true runs per revision and round")
    parser.add_argument("--stream-mib", type=_positive, default=512)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="a subset of " + ",".join(SCENARIOS))
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose among {', '.join(SCENARIOS)}")
    reset = default_signals()
    if reset:
        print(f"bench/compare.py: {', '.join(reset)} ignored by the caller: reset to the default for what runs here",
              file=sys.stderr)
    bin_dir = Path(sys.executable).parent
    tools = ("jq", "jobqueue-server", "jobqueue-worker")
    if not all((bin_dir / tool).exists() for tool in tools):  # another interpreter: the project's venv's, if any
        venv_python = Path(os.environ.get("BENCH_PYTHON", REPO / ".venv" / "bin" / "python"))
        if venv_python.exists() and venv_python.parent != bin_dir:
            os.execv(venv_python, [str(venv_python), __file__, *sys.argv[1:]])
    for tool in tools:
        if not (bin_dir / tool).exists():
            parser.error(f"{bin_dir / tool} is missing: run this with the project's venv (make install)")
    work = REPO / "bench" / ".work" / "compare"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        revs = [unpack(rev, work) for rev in args.revisions]
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    procs = Processes(logs)
    xargs: list[float] = []
    try:
        for rev in revs:
            start(rev, procs, bin_dir)
        for rnd in range(args.rounds):
            order = revs[rnd % len(revs):] + revs[:rnd % len(revs)]
            print(f"[compare {time.strftime('%H:%M:%S')}] round {rnd + 1} of {args.rounds}", file=sys.stderr,
                  flush=True)
            if "latency" in only:  # run by run, so that each run's pair is seconds apart
                for _ in range(args.latency_runs):
                    for rev in order:
                        rev.latency.append(timed_run([*rev.jq, "-s", rev.address, "true"], 60, rev.env))
                        rev.echo_latency.append(timed_run([*rev.jq, "-s", rev.address, "echo", "hello"], 60,
                                                          rev.env))
            if "throughput" in only:
                for rev in order:
                    time_burst(rev, bin_dir, args.jobs)
                xargs.append(time_xargs(args.jobs))
            if "streaming" in only:
                for rev in order:
                    time_stream(rev, bin_dir, args.stream_mib << 20)
    finally:
        procs.stop_all()
    text = report(revs, xargs, args)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
