"""Scenario 3: broker capacity, in process (the sans-IO Broker alone) and
through the real server process with synthetic DEALER peers."""

from __future__ import annotations

import shlex

from harness import HELPERS, Cluster, Context, Row, Section, Stats, Target, run_json

TARGET = 20_000.0


def run(ctx: Context) -> Section:
    section = Section("broker", "3. Broker capacity")
    section.attempt("in-process broker", lambda: _in_process(ctx, section))
    section.attempt("server process", lambda: _through_server(ctx, section))
    return section


def _helper(ctx: Context, *args: str) -> list[str]:
    return [str(ctx.python), str(HELPERS / "broker_capacity.py"), *args]


def _in_process(ctx: Context, section: Section) -> None:
    sizes = ctx.sizes
    jobs = sizes.broker_jobs
    totals: dict[int, list[float]] = {w: [] for w in sizes.broker_workers}
    drains: dict[int, list[float]] = {w: [] for w in sizes.broker_workers}
    mixed: list[float] = []  # resource requests (issue 14), alternating with the plain runs
    for _ in range(sizes.broker_rounds):
        for workers in sizes.broker_workers:
            result = run_json(_helper(ctx, "jobs", "--workers", str(workers), "--jobs", str(jobs)), 600)
            totals[workers].append(jobs / result["total_seconds"])
            drains[workers].append(jobs / result["drain_seconds"])
        result = run_json(_helper(ctx, *_mixed_args(ctx)), 600)
        mixed.append(jobs / result["total_seconds"])
    for workers in sizes.broker_workers:
        command = shlex.join(_helper(ctx, "jobs", "--workers", str(workers), "--jobs", str(jobs)))
        section.commands.append(command)
        section.rows.append(Row(f"Broker, {workers} workers, {jobs} queued: whole job", "jobs/s",
                                Stats.of(totals[workers]), command))
        section.rows.append(Row(f"Broker, {workers} workers, {jobs} queued: match and route only", "jobs/s",
                                Stats.of(drains[workers])))
    _mixed(ctx, section, mixed)
    if not ctx.quick:
        _queue_length(ctx, section)
        _fair_share(ctx, section)
    chunks = [run_json(_helper(ctx, "chunks", "--messages", str(sizes.chunk_messages)), 600)
              for _ in range(sizes.broker_rounds)]
    section.commands.append(shlex.join(_helper(ctx, "chunks", "--messages", str(sizes.chunk_messages))))
    section.rows.append(Row("Broker: 64-byte Output relayed worker → client, each with its Ack", "chunks/s",
                            Stats.of([c["chunks"] / c["seconds"] for c in chunks])))
    section.rows.append(Row("Broker: the same, counted as messages", "messages/s",
                            Stats.of([c["messages"] / c["seconds"] for c in chunks])))
    slowest = min((r.median or 0.0) for r in section.rows if r.name.endswith("whole job"))
    section.targets.append(Target(f"Broker ≥ {TARGET:,.0f} jobs/s (slowest worker count, whole job)", slowest,
                                  TARGET, True, "jobs/s"))
    section.notes.append("In process: one Python process calls `Broker.receive` with frames encoded beforehand "
                         "(the peers' work); encoding what the broker sends is counted, as the server does it. "
                         "\"Whole job\" is Submit → Queued, Assign, Started, Finished (relayed), Release; "
                         "\"match and route only\" leaves the submissions out.")
    if ctx.profile or section.targets[-1].met is False:
        profile = run_json(_helper(ctx, "jobs", "--workers", str(max(sizes.broker_workers)), "--jobs",
                                   str(jobs), "--profile"), 600)
        section.profiles.append(("cProfile of the in-process broker run (top by own time)", profile["profile"]))


def _mixed_args(ctx: Context) -> list[str]:
    return ["jobs", "--workers", str(max(ctx.sizes.broker_workers)), "--jobs", str(ctx.sizes.broker_jobs), "--mixed"]


def _mixed(ctx: Context, section: Section, rates: list[float]) -> None:
    """Resources (issue 14): jobs asking for a mix of CPUs, memory, GPUs and a licence, on
    workers of 8 CPUs, 32G, 4 GPUs and licence=2 (see broker_capacity.py --mixed)."""
    workers, jobs = max(ctx.sizes.broker_workers), ctx.sizes.broker_jobs
    command = shlex.join(_helper(ctx, *_mixed_args(ctx)))
    section.commands.append(command)
    name = f"Broker, {workers} workers, {jobs} queued, mixed resource requests: whole job (mixed)"
    section.rows.append(Row(name, "jobs/s", Stats.of(rates), command))
    section.ratio("mixed resource requests / one-CPU jobs, whole job (1.0: resources cost nothing)", name,
                  f"Broker, {workers} workers, {jobs} queued: whole job")
    section.targets.append(Target(f"Broker ≥ {TARGET:,.0f} jobs/s, {workers} workers, {jobs} queued mixed requests",
                                  Stats.of(rates).median or 0.0, TARGET, True, "jobs/s"))


def _queue_length(ctx: Context, section: Section) -> None:
    """Cost per assignment against queue length: 10× the jobs, same workers."""
    jobs = ctx.sizes.broker_jobs * 10
    args = _helper(ctx, "jobs", "--workers", "100", "--jobs", str(jobs))
    rates = [jobs / run_json(args, 600)["drain_seconds"] for _ in range(3)]
    section.commands.append(shlex.join(args))
    section.rows.append(Row(f"Broker, 100 workers, {jobs} queued: match and route only", "jobs/s",
                            Stats.of(rates), shlex.join(args)))
    section.ratio(f"match+route rate at {jobs} queued / at {ctx.sizes.broker_jobs} queued (1.0 = independent)",
                  f"Broker, 100 workers, {jobs} queued: match and route only",
                  f"Broker, 100 workers, {ctx.sizes.broker_jobs} queued: match and route only")


def _fair_share(ctx: Context, section: Section) -> None:
    """The same jobs from 10 owners in turn, with --fair-share (the scheduler compares owners)."""
    jobs, workers = ctx.sizes.broker_jobs, max(ctx.sizes.broker_workers)
    args = _helper(ctx, "jobs", "--workers", str(workers), "--jobs", str(jobs), "--owners", "10", "--fair-share")
    rates = [jobs / run_json(args, 600)["total_seconds"] for _ in range(ctx.sizes.broker_rounds)]
    section.commands.append(shlex.join(args))
    section.rows.append(Row(f"Broker, {workers} workers, {jobs} queued, 10 owners, --fair-share: whole job",
                            "jobs/s", Stats.of(rates), shlex.join(args)))


def _through_server(ctx: Context, section: Section) -> None:
    cluster = Cluster(ctx, "capacity", heartbeat=10.0).start_server()
    try:
        jobs = ctx.sizes.server_jobs
        for workers in ctx.sizes.server_workers:
            args = [str(ctx.python), str(HELPERS / "synthetic_peers.py"), "capacity", cluster.address,
                    "--workers", str(workers), "--jobs", str(jobs)]
            rates = [jobs / run_json(args, 600)["seconds"] for _ in range(ctx.sizes.broker_rounds)]
            section.commands.append(shlex.join(args))
            section.rows.append(Row(f"Server process, {workers} synthetic workers, {jobs} jobs", "jobs/s",
                                    Stats.of(rates), shlex.join(args)))
    finally:
        cluster.stop()
    section.notes.append("Server process: a real `jobqueue-server` on loopback TCP; the synthetic workers and the "
                         "client are ZeroMQ DEALER sockets in one Python process that answer at once, so the "
                         "figure is the server's and the driver's together (they share the 2 cores).")
