"""Scenario 5: memory of the server (idle, with many workers, with many queued
jobs) and of server, worker and jq while a stream goes to a slow reader."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field

from harness import HELPERS, Cluster, Context, Row, Section, Stats, Target, rss_kib, run_json, settle_rss

from scenarios.streaming import start_pipeline

MIB = 1024.0
IDLE_TARGET_MIB = 40.0
JOB_TARGET_BYTES = 1024.0
GROWTH_LIMIT_MIB = 16.0


def run(ctx: Context) -> Section:
    section = Section("memory", "5. Memory")
    section.attempt("server idle and with workers", lambda: _idle_and_workers(ctx, section))
    section.attempt("queued jobs (minimal spec)", lambda: _queued_jobs(ctx, section, "minimal"))
    section.attempt("queued jobs (full spec)", lambda: _queued_jobs(ctx, section, "full"))
    section.attempt("Broker heap per job", lambda: _heap_per_job(ctx, section))
    section.attempt("slow reader", lambda: _slow_reader(ctx, section))
    section.notes.append("RSS read from /proc/PID/status (VmRSS; VmHWM for peaks), in MiB; readings taken "
                         "after 0.5 s of quiet. Per-item figures are (RSS with them − RSS before) / count. "
                         f"Queued jobs: {ctx.sizes.mem_rounds} fresh servers per spec, each filled with "
                         f"{ctx.sizes.mem_jobs} jobs (median, min and max over them); the rest single readings.")
    return section


def _single(name: str, unit: str, value: float, command: str = "", note: str = "") -> Row:
    return Row(name, unit, Stats.of([value]), command, note)


def _peers(ctx: Context, cluster: Cluster, *args: str) -> tuple[subprocess.Popen[str], dict[str, object], str]:
    """Start synthetic peers that hold their connections until their stdin closes."""
    argv = [str(ctx.python), str(HELPERS / "synthetic_peers.py"), args[0], cluster.address, *args[1:]]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode} before it was ready")
    return proc, json.loads(line), shlex.join(argv)


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=60)


def _idle_and_workers(ctx: Context, section: Section) -> None:
    cluster = Cluster(ctx, "memory-workers", heartbeat=10.0).start_server()
    try:
        assert cluster.server is not None
        idle = settle_rss(cluster.server.pid)
        section.rows.append(_single("server RSS, idle", "MiB", idle / MIB, "jobqueue-server ADDRESS"))
        section.targets.append(Target(f"server idle ≤ {IDLE_TARGET_MIB:.0f} MiB", idle / MIB, IDLE_TARGET_MIB,
                                      False, "MiB"))
        n = ctx.sizes.mem_workers
        peers, _, command = _peers(ctx, cluster, "workers", str(n))
        try:
            loaded = settle_rss(cluster.server.pid)
        finally:
            _release(peers)
        section.rows.append(_single(f"server RSS, {n} workers connected", "MiB", loaded / MIB, command))
        section.rows.append(_single("server memory per connected worker", "KiB", (loaded - idle) / n))
        section.commands.append(command)
    finally:
        cluster.stop()


def _queued_jobs(ctx: Context, section: Section, env: str) -> None:
    """Bytes per queued job, from ``mem_rounds`` fresh servers each filled with ``mem_jobs``
    jobs: one server's figure moves by a third between runs (how much of the fill's
    transient memory the allocator keeps), so the median of several and their range."""
    n, rounds = ctx.sizes.mem_jobs, ctx.sizes.mem_rounds
    loaded: list[float] = []
    per_job: list[float] = []
    command, spec_bytes = "", None
    for i in range(rounds):
        cluster = Cluster(ctx, f"memory-queue-{env}-{i}", heartbeat=10.0).start_server()
        try:
            assert cluster.server is not None
            before = settle_rss(cluster.server.pid)
            peers, ready, command = _peers(ctx, cluster, "queue", str(n), "--env", env)
            try:
                rss = settle_rss(cluster.server.pid)
            finally:
                _release(peers)
        finally:
            cluster.stop()
        loaded.append(rss / MIB)
        per_job.append((rss - before) * 1024 / n)
        spec_bytes = ready["spec_bytes"]
    what = "no environment" if env == "minimal" else "this process's whole environment, as jq sends"
    note = f"Submit frame {spec_bytes} bytes ({what}); {rounds} fresh servers"
    section.rows.append(Row(f"server RSS, {n} queued jobs ({env} spec)", "MiB", Stats.of(loaded), command))
    section.rows.append(Row(f"server memory per queued job ({env} spec)", "bytes", Stats.of(per_job), "", note))
    section.commands.append(command)
    if env == "minimal":
        stats = Stats.of(per_job)
        section.targets.append(Target(f"≤ {JOB_TARGET_BYTES:.0f} bytes per queued job (minimal spec)",
                                      stats.median, JOB_TARGET_BYTES, False, "bytes",
                                      f"median of {rounds} servers; range {stats.low:,.0f}–{stats.high:,.0f}"))


def _heap_per_job(ctx: Context, section: Section) -> None:
    """Python heap per queued job in the Broker alone (tracemalloc), with where it goes."""
    n = min(ctx.sizes.mem_jobs, 20_000)
    args = [str(ctx.python), str(HELPERS / "broker_capacity.py"), "memory", "--jobs", str(n)]
    result = run_json(args, 300)
    section.rows.append(_single("Broker heap per queued job (tracemalloc, minimal spec)", "bytes",
                                result["bytes_per_job"], shlex.join(args)))
    section.commands.append(shlex.join(args))
    section.profiles.append(("Where a queued job's bytes go (tracemalloc, Broker alone, by line)", result["top"]))


@dataclass
class Track:
    """RSS samples (seconds since start, KiB) and the peak of one process."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    peak: int = 0

    def sample(self, t: float) -> None:
        rss, hwm = rss_kib(self.pid), rss_kib(self.pid, "VmHWM")
        if rss is not None:
            self.samples.append((t, rss))
        if hwm is not None:
            self.peak = max(self.peak, hwm)

    def growth(self, duration: float) -> float:
        """KiB the RSS grew after the first fifth of the stream."""
        early = [r for t, r in self.samples if t <= duration / 5]
        late = [r for t, r in self.samples if t > duration / 5]
        return float(max(late) - max(early)) if early and late else 0.0


def _slow_reader(ctx: Context, section: Section) -> None:
    n, rate = ctx.sizes.slow_bytes, ctx.sizes.slow_rate
    cluster = Cluster(ctx, "memory-stream").start_server().start_worker(2)
    try:
        assert cluster.server is not None and cluster.worker is not None
        reader = [str(ctx.python), str(HELPERS / "slow_reader.py"), str(rate)]
        start = time.monotonic()
        pipeline = start_pipeline(cluster, n, reader)
        tracks = {"server": Track(cluster.server.pid), "worker": Track(cluster.worker.pid),
                  "jq": Track(pipeline.jq.pid)}
        while pipeline.jq.poll() is None and time.monotonic() - start < 900:
            for track in tracks.values():
                track.sample(time.monotonic() - start)
            time.sleep(0.1)
        status = pipeline.wait(60)
        duration = time.monotonic() - start
        assert pipeline.reader is not None and pipeline.reader.stdout is not None
        got = int(pipeline.reader.stdout.read() or 0)
        for track in tracks.values():
            track.sample(duration)
    finally:
        cluster.stop()
    command = (f"head -c {n} /dev/zero | {shlex.join(cluster.jq('cat'))} | {shlex.join(reader)}  "
               f"(reader at {rate / 1e6:.0f} MB/s)")
    section.commands.append(command)
    if status != 0 or got != n:
        raise RuntimeError(f"slow-reader stream failed: exit {status}, {got} of {n} bytes arrived")
    section.notes.append(f"Slow reader: {n / 1e6:.0f} MB at most {rate / 1e6:.0f} MB/s took {duration:.1f} s. "
                         f"Bounded = RSS grew at most {GROWTH_LIMIT_MIB:.0f} MiB after the first fifth of the stream.")
    for name, track in tracks.items():
        section.rows.append(_single(f"peak RSS of {name} (slow reader)", "MiB", track.peak / MIB, command))
        growth = track.growth(duration) / MIB
        section.rows.append(_single(f"RSS growth of {name} after the first fifth", "MiB", growth))
        section.targets.append(Target(f"{name} memory bounded under a slow reader (growth ≤ "
                                      f"{GROWTH_LIMIT_MIB:.0f} MiB)", growth, GROWTH_LIMIT_MIB, False, "MiB"))
