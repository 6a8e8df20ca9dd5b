"""What every scenario of the benchmark suite shares: the run's settings, the
processes it starts (and stops, by pid), timing of commands, statistics, RSS
readings and profiles.

Nothing here knows about a particular scenario; see ``scenarios/``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HELPERS = BENCH / "helpers"


# --- sizes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: the full run, or the quick smoke run."""

    latency_rounds: int
    latency_runs: int
    burst_jobs: int
    burst_rounds: int
    broker_jobs: int
    broker_workers: tuple[int, ...]
    broker_rounds: int
    chunk_messages: int
    server_jobs: int
    server_workers: tuple[int, ...]
    stream_bytes: int
    stream_rounds: int
    mem_workers: int
    mem_jobs: int
    slow_bytes: int
    slow_rate: int  # bytes per second the slow reader takes
    profile_seconds: float
    watch_queued: int = 10_000  # jobs waiting while the watching scenario measures
    watch_rounds: int = 7
    #: Fresh servers filled with ``mem_jobs`` queued jobs, per spec: an RSS reading moves
    #: with the allocator (what the fill's transient objects leave behind), so its median.
    mem_rounds: int = 5


FULL = Sizes(
    latency_rounds=5, latency_runs=20, burst_jobs=1000, burst_rounds=5, broker_jobs=10_000,
    broker_workers=(1, 100, 1000), broker_rounds=5, chunk_messages=100_000, server_jobs=5000,
    server_workers=(2, 100), stream_bytes=1 << 30, stream_rounds=3, mem_workers=1000, mem_jobs=20_000,
    slow_bytes=1 << 30, slow_rate=64 << 20, profile_seconds=6.0,
)
QUICK = Sizes(
    latency_rounds=2, latency_runs=3, burst_jobs=20, burst_rounds=1, broker_jobs=300,
    broker_workers=(1, 10, 100), broker_rounds=1, chunk_messages=1000, server_jobs=100,
    server_workers=(2,), stream_bytes=8 << 20, stream_rounds=1, mem_workers=20, mem_jobs=1000,
    slow_bytes=8 << 20, slow_rate=256 << 20, profile_seconds=1.0, watch_queued=100, watch_rounds=1,
    mem_rounds=2,
)


# --- statistics and results ----------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no samples")
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Row:
    """One measured thing: its samples' statistics in ``unit``."""

    name: str
    unit: str
    stats: Stats | None
    command: str = ""
    note: str = ""

    @property
    def median(self) -> float | None:
        return self.stats.median if self.stats else None


@dataclass
class Target:
    """One target of the issue: ``value`` (a ratio or an amount) against ``limit``."""

    text: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit


@dataclass
class Section:
    """What one scenario reports."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    ratios: list[tuple[str, float | None]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""

    def attempt(self, what: str, step: Callable[[], None]) -> None:
        """Run one part of the scenario; a crash is recorded and the other parts go on."""
        try:
            step()
        except Exception:
            self.error += f"{what} crashed:\n{traceback.format_exc()}\n"

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def median(self, name: str) -> float | None:
        row = self.row(name)
        return row.median if row else None

    def ratio(self, text: str, numerator: str, denominator: str) -> float | None:
        """Record (and return) the ratio of two rows' medians."""
        value = ratio(self.median(numerator), self.median(denominator))
        self.ratios.append((text, value))
        return value


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# --- the run's context -----------------------------------------------------------------------


@dataclass
class Context:
    quick: bool
    sizes: Sizes
    work: Path
    python: Path  # the project's interpreter (jobqueue installed)
    bench_python: Path | None  # the bench venv's interpreter (hyperqueue, py-spy), if any
    procs: Processes
    profile: bool  # profile even where the targets are met

    @property
    def bin(self) -> Path:
        return self.python.parent

    def tool(self, name: str) -> str | None:
        return shutil.which(name)

    def py_spy(self) -> str | None:
        if self.quick:
            return None
        if self.bench_python is not None and (self.bench_python.parent / "py-spy").exists():
            return str(self.bench_python.parent / "py-spy")
        return shutil.which("py-spy")

    def hyperqueue_python(self) -> Path | None:
        """An interpreter that imports hyperqueue (never in quick mode)."""
        if self.quick or self.bench_python is None:
            return None
        probe = subprocess.run([str(self.bench_python), "-c", "import hyperqueue"], capture_output=True)
        return self.bench_python if probe.returncode == 0 else None

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


class Processes:
    """Every long-running process the suite starts, each in its own session so
    that stopping it (by its pid) takes its children along."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], *, log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        path = self.logs / f"{log}.log"
        kwargs.setdefault("stdout", open(path, "ab"))
        kwargs.setdefault("stderr", subprocess.STDOUT)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(pid: int, signum: int) -> None:
    """Signal the process group this suite created for ``pid`` (pgid == pid)."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Cluster:
    """A jobqueue server (and optionally one worker) on a loopback TCP port."""

    def __init__(self, ctx: Context, name: str, *, heartbeat: float = 1.0) -> None:
        self.ctx = ctx
        self.name = name
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.heartbeat = heartbeat
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def start_server(self) -> Cluster:
        args = [str(self.ctx.bin / "jobqueue-server"), self.address, "--heartbeat", str(self.heartbeat),
                "--restart-hold", "0"]
        self.server = self.ctx.procs.start(args, log=f"{self.name}-server")
        wait_for(lambda: self.status() is not None, 20, f"server {self.name} to answer")
        return self

    def start_worker(self, slots: int = 2) -> Cluster:
        args = [str(self.ctx.bin / "jobqueue-worker"), self.address, "-j", str(slots), "--name", f"{self.name}-w"]
        self.worker = self.ctx.procs.start(args, log=f"{self.name}-worker")
        wait_for(self._worker_connected, 20, f"worker of {self.name} to connect")
        return self

    def _worker_connected(self) -> bool:
        status = self.status()
        return bool(status) and any(w["name"] == f"{self.name}-w" for w in status["workers"])

    def status(self) -> dict[str, Any] | None:
        result = subprocess.run([str(self.ctx.bin / "jobqueue"), "status", "--json", "-s", self.address,
                                 "--timeout", "1"], capture_output=True, timeout=30)
        return dict(json.loads(result.stdout)) if result.returncode == 0 else None

    def jq(self, *args: str) -> list[str]:
        return [str(self.ctx.bin / "jq"), "-s", self.address, *args]

    def stop(self) -> None:
        for proc in (self.worker, self.server):
            if proc is not None:
                self.ctx.procs.stop(proc)


# --- timing commands --------------------------------------------------------------------------


@dataclass
class Command:
    name: str
    argv: list[str]

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def time_commands(ctx: Context, label: str, commands: list[Command], *, rounds: int, runs: int,
                  warmup: int = 2, env: dict[str, str] | None = None) -> tuple[dict[str, list[float]], list[str]]:
    """Wall-clock seconds of every run of each command, alternating the commands
    round by round (their order rotates), with hyperfine where it is installed.
    Returns the samples by name and the exact invocations."""
    samples: dict[str, list[float]] = {c.name: [] for c in commands}
    invocations: list[str] = []
    hyperfine = ctx.tool("hyperfine")
    for rnd in range(rounds):
        shift = rnd % len(commands)
        order = commands[shift:] + commands[:shift]
        if hyperfine:
            out = ctx.work / f"hyperfine-{label}-{rnd}.json"
            args = [hyperfine, "-N", "--style", "none", "--warmup", str(warmup), "--runs", str(runs),
                    "--export-json", str(out)]
            for c in order:
                args += ["-n", c.name, c.text]
            result = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=900)
            if result.returncode != 0:
                raise RuntimeError(f"hyperfine failed ({result.returncode}): {result.stderr.decode()[-1500:]}")
            for result in json.loads(out.read_text())["results"]:
                samples[result["command"]] += result["times"]
            invocations.append(shlex.join(args))
        else:
            for c in order:
                samples[c.name] += _time_runs(c.argv, runs, warmup, env)
            invocations.append(f"(no hyperfine: timed in Python) {' ; '.join(c.text for c in order)}")
    return samples, invocations


def _time_runs(argv: list[str], runs: int, warmup: int, env: dict[str, str] | None) -> list[float]:
    times = [timed_run(argv, 120, env) for _ in range(warmup + runs)]
    return times[warmup:]


def default_signals() -> list[str]:
    """Give what we start the default signal dispositions; return the names of those
    that were ignored.  A job takes its caller's ignored signals (README "What a job
    sees"): a bench started from a shell's background (SIGINT ignored) or under nohup
    would time jobs started behind ``env --ignore-signal``, not plain ones, and a
    revision from before that mimicry (session 2) would not pay for it."""
    reset = []
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            reset.append(signal.Signals(signum).name)
    return reset


def timed_run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> float:
    """Seconds a command takes (stdin and stdout /dev/null); raises if it fails.  Waited
    for by a blocking wait, its time limit kept by a timer: ``subprocess.run(timeout=)``
    polls with sleeps that grow to 50 ms, which rounds a 20 ms run up to 31.5 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # its own group: the timer kills a whole pipeline
    watchdog = threading.Timer(timeout, _signal_group, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {code}" + (f" (killed after {timeout:g}s)" if code < 0 else ""))
    return seconds


def time_shell(command: str, timeout: float, env: dict[str, str] | None = None) -> float:
    """Seconds one ``bash -o pipefail -c COMMAND`` takes; raises if it fails."""
    start = time.perf_counter()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{command!r} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return seconds


def run_json(args: Sequence[str], timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run a helper that prints one JSON object as its last line of stdout."""
    result = subprocess.run(list(args), capture_output=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {result.returncode}: {result.stderr.decode()[-1500:]}")
    return dict(json.loads(result.stdout.decode().strip().splitlines()[-1]))


# --- memory ------------------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """A process's CPU seconds so far, user and system: its own, and its reaped children's."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def rss_kib(pid: int, field_name: str = "VmRSS") -> int | None:
    """A process's resident memory (or peak, with ``VmHWM``) in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def settle_rss(pid: int, seconds: float = 0.5) -> int:
    """RSS once it stopped moving (the last of a few readings)."""
    time.sleep(seconds)
    value = rss_kib(pid)
    if value is None:
        raise RuntimeError(f"process {pid} is gone")
    return value


# --- profiles ------------------------------------------------------------------------------------


def import_times(python: Path, argv: list[str], top: int = 15, env: dict[str, str] | None = None) -> str:
    """The slowest imports (cumulative microseconds) of running ``argv`` with -X importtime."""
    result = subprocess.run([str(python), "-X", "importtime", *argv], capture_output=True, timeout=60, env=env)
    entries = []
    for line in result.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, cumulative, name = line.split("|", 2)
        entries.append((int(cumulative), int(head.split(":")[1]), name.strip()))
    entries.sort(reverse=True)
    lines = [f"{'cumulative us':>14} {'self us':>9}  module"]
    lines += [f"{c:>14} {s:>9}  {n}" for c, s, n in entries[:top]]
    total = sum(s for _, s, _ in entries)
    lines.append(f"(sum of self times of all {len(entries)} imports: {total / 1000:.1f} ms)")
    return "\n".join(lines)


def py_spy_start(ctx: Context, pid: int, name: str, seconds: float) -> tuple[subprocess.Popen[bytes], Path] | None:
    """Start sampling ``pid`` with py-spy (raw collapsed stacks); None without py-spy."""
    spy = ctx.py_spy()
    if spy is None:
        return None
    out = ctx.work / f"py-spy-{name}.txt"
    out.unlink(missing_ok=True)
    args = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--format", "raw",
            "--output", str(out), "--nonblocking", "--rate", "200"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def py_spy_report(started: tuple[subprocess.Popen[bytes], Path] | None, top: int = 12) -> str:
    """Top functions by own samples and by inclusive samples, from a py-spy record."""
    if started is None:
        return "py-spy is not installed (bench/run installs it into bench/.venv)"
    proc, out = started
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        return "py-spy recorded nothing (the process ended first, or ptrace is not allowed)"
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "py-spy recorded no samples"
    lines = [f"{total} samples; top functions by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("top functions including callees:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def _short_frame(frame: str) -> str:
    """``func (/long/path/jobqueue/mod.py:12)`` -> ``func (jobqueue/mod.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if where else name
