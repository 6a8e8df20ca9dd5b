"""Scenario 6: watching must not slow the broker.  Executor throughput (trivial jobs on
2 worker slots) while many jobs wait in the queue, with and without a dashboard
(`jobqueue dashboard`, subscribed to the server, and one browser tab's event stream
read from it), rounds alternating."""

from __future__ import annotations

import shlex
import urllib.error
import urllib.request

from harness import HELPERS, Cluster, Context, Row, Section, Stats, Target, cpu_times, free_port, run_json, wait_for

PLAIN = "Executor, no dashboard"
WATCHED = "Executor, dashboard open"
SERVER_CPU = "server CPU, "
DASHBOARD_CPU = "dashboard CPU (its own process), dashboard open"
#: A tag no worker has: the held jobs wait for the whole scenario.
NEVER = "no-worker-has-this-tag"


def run(ctx: Context) -> Section:
    queued, jobs = ctx.sizes.watch_queued, ctx.sizes.burst_jobs
    section = Section("watching", f"6. Watching: {jobs} × `true` on 2 slots with {queued:,} jobs queued, "
                                  "with and without a dashboard")
    cluster = Cluster(ctx, "watching").start_server().start_worker(2)
    try:
        holder = [str(ctx.python), str(HELPERS / "queue_holder.py"), cluster.address, str(queued), NEVER]
        ctx.procs.start(holder, log="watching-holder")
        server_log = ctx.procs.logs / "watching-server.log"
        wait_for(lambda: server_log.read_text().count("job-queued") >= queued, 300, f"{queued} jobs queued")
        burst = [str(ctx.python), str(HELPERS / "executor_burst.py"), cluster.address, str(jobs)]
        samples: dict[str, list[float]] = {PLAIN: [], WATCHED: []}
        cpu: dict[str, list[float]] = {SERVER_CPU + PLAIN: [], SERVER_CPU + WATCHED: [], DASHBOARD_CPU: []}
        for rnd in range(ctx.sizes.watch_rounds):
            for name in (PLAIN, WATCHED) if rnd % 2 == 0 else (WATCHED, PLAIN):
                ctx.log(f"watching round {rnd + 1}: {name}")
                section.attempt(name, lambda n=name: samples[n].append(_burst(ctx, cluster, burst, jobs, n, cpu)))
        for name in (PLAIN, WATCHED):
            stats = Stats.of(samples[name]) if samples[name] else None
            section.rows.append(Row(name, "jobs/s", stats, shlex.join(burst), "" if stats else "crashed"))
        for name, values in cpu.items():
            section.rows.append(Row(name, "ms per 1000 jobs", Stats.of(values) if values else None))
        section.commands += [shlex.join(holder), shlex.join(burst),
                             f"{ctx.bin / 'jobqueue'} dashboard -s {cluster.address} --listen 127.0.0.1:PORT",
                             f"{ctx.python} {HELPERS / 'sse_reader.py'} http://127.0.0.1:PORT/api/stream"]
        kept = section.ratio("dashboard open / no dashboard", WATCHED, PLAIN)
        section.ratio("server CPU per job: dashboard open / no dashboard", SERVER_CPU + WATCHED, SERVER_CPU + PLAIN)
        section.targets.append(Target("Executor with a dashboard open ≥ 0.90 × without", kept, 0.90, True, "×"))
        section.notes.append("CPU times are per 1000 jobs of the burst (user + system, from /proc): unlike "
                             "the rates, they hardly depend on what else the shared machine runs.")
        section.notes.append("The dashboard (its own process, on the same 2 cores) mirrors every change the "
                             "server pushes and serves one event stream of the overview page (counters, charts, "
                             "the first page of all jobs); it starts afresh for every round, and the burst "
                             "starts once it serves (it has the server's whole state by then).")
    finally:
        cluster.stop()
    return section


def _burst(ctx: Context, cluster: Cluster, burst: list[str], jobs: int, name: str,
           cpu: dict[str, list[float]]) -> float:
    assert cluster.server is not None
    server = cluster.server.pid
    if name == PLAIN:
        before = cpu_times(server)[0]
        rate = jobs / float(run_json(burst, 600)["seconds"])
        cpu[SERVER_CPU + PLAIN].append((cpu_times(server)[0] - before) * 1e6 / jobs)
        return rate
    port = free_port()
    dashboard = ctx.procs.start([str(ctx.bin / "jobqueue"), "dashboard", "-s", cluster.address,
                                 "--listen", f"127.0.0.1:{port}"], log="watching-dashboard")
    reader = None
    try:
        wait_for(lambda: _serving(port), 120, "the dashboard to serve")
        reader = ctx.procs.start([str(ctx.python), str(HELPERS / "sse_reader.py"),
                                  f"http://127.0.0.1:{port}/api/stream"], log="watching-reader")
        before = cpu_times(server)[0], cpu_times(dashboard.pid)[0]
        rate = jobs / float(run_json(burst, 600)["seconds"])
        cpu[SERVER_CPU + WATCHED].append((cpu_times(server)[0] - before[0]) * 1e6 / jobs)
        cpu[DASHBOARD_CPU].append((cpu_times(dashboard.pid)[0] - before[1]) * 1e6 / jobs)
        return rate
    finally:
        for proc in (reader, dashboard):
            if proc is not None:
                ctx.procs.stop(proc)


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False
