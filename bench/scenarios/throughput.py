"""Scenario 2: throughput of 1000 trivial jobs on 2 worker slots."""

from __future__ import annotations

import shlex
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from harness import (
    HELPERS,
    Cluster,
    Context,
    Row,
    Section,
    Stats,
    Target,
    py_spy_report,
    py_spy_start,
    run_json,
    time_shell,
)

EXECUTOR = "jobqueue.Executor"
EXECUTOR_APART = "jobqueue.Executor, limits not the worker's"
JQ_XARGS = "jq via xargs -P4"
XARGS = "local xargs -P2 true"
PARALLEL = "GNU parallel -j2 true"
HYPERQUEUE = "HyperQueue LocalCluster"


@dataclass
class Variant:
    name: str
    command: str
    seconds: Callable[[], float]  # one burst of all the jobs


def run(ctx: Context, cluster: Cluster) -> Section:
    section = Section("throughput", f"2. Throughput: {ctx.sizes.burst_jobs} × `true` on 2 worker slots")
    variants = _variants(ctx, cluster, section)
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    for rnd in range(ctx.sizes.burst_rounds):
        shift = rnd % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            ctx.log(f"throughput round {rnd + 1}: {variant.name}")
            section.attempt(variant.name, lambda v=variant: samples[v.name].append(ctx.sizes.burst_jobs / v.seconds()))
    for v in variants:
        stats = Stats.of(samples[v.name]) if samples[v.name] else None
        section.rows.append(Row(v.name, "jobs/s", stats, v.command, "" if stats else "crashed: see above"))
        section.commands.append(v.command)
    section.ratio("Executor / HyperQueue (medians)", EXECUTOR, HYPERQUEUE)
    section.ratio("Executor / xargs -P2 (medians)", EXECUTOR, XARGS)
    # the targets take each round's own ratio (the two ran within seconds of each other),
    # then the median: the host's load drifts between rounds far more than within one
    hq = _paired(section, "Executor / HyperQueue (median of each round's ratio)", samples[EXECUTOR],
                 samples.get(HYPERQUEUE, []))
    of_xargs = _paired(section, "Executor / xargs -P2 (median of each round's ratio)", samples[EXECUTOR],
                       samples[XARGS])
    section.ratio("Executor / GNU parallel", EXECUTOR, PARALLEL)
    section.ratio("Executor with limits not the worker's / Executor", EXECUTOR_APART, EXECUTOR)
    section.ratio("jq via xargs -P4 / xargs -P2", JQ_XARGS, XARGS)
    section.targets += [
        Target("Executor ≥ 1000 jobs/s", section.median(EXECUTOR), 1000, True, "jobs/s"),
        Target("Executor ≥ 2 × HyperQueue", hq, 2.0, True, "×", "" if hq else "HyperQueue not measured"),
        Target("Executor ≥ 0.55 × `xargs -P2`", of_xargs, 0.55, True, "×"),
    ]
    section.notes.append("Rates are jobs / wall-clock seconds of one burst, rounds alternating. The Executor and "
                         "HyperQueue figures time submission to the last result inside one client process (the "
                         "Executor runs one warm-up job first; HyperQueue's cluster start is not counted, its "
                         "wait polls on a 1 s tick). Shell figures include starting xargs/parallel. "
                         "\"Limits not the worker's\": the Executor runs under `prlimit --nofile=512:`, as a "
                         "client on another machine would differ: every job then starts behind the worker's "
                         "`prlimit` (an exec more), as it would behind `nice` or `env --ignore-signal` for a "
                         "caller's nice value or ignored signals (`nohup`, a background job).")
    if ctx.profile or any(t.met is False for t in section.targets[:1] + section.targets[2:]):
        _profile(ctx, cluster, section)
    return section


def _paired(section: Section, text: str, numerators: list[float], denominators: list[float]) -> float | None:
    """The median of the per-round ratios (the ratio of the medians if a round crashed)."""
    if not numerators or not denominators:
        section.ratios.append((text, None))
        return None
    if len(numerators) == len(denominators):
        value = statistics.median(a / b for a, b in zip(numerators, denominators))
    else:
        value = statistics.median(numerators) / statistics.median(denominators)
    section.ratios.append((text, value))
    return value


def _variants(ctx: Context, cluster: Cluster, section: Section) -> list[Variant]:
    n = ctx.sizes.burst_jobs
    executor_args = [str(ctx.python), str(HELPERS / "executor_burst.py"), cluster.address, str(n)]
    jq = shlex.join(cluster.jq("true"))
    variants = [
        Variant(EXECUTOR, shlex.join(executor_args), lambda: float(run_json(executor_args, 600)["seconds"])),
        _shell(JQ_XARGS, f"seq {n} | xargs -n1 -P4 {jq}"),
        _shell(XARGS, f"seq {n} | xargs -n1 -P2 true"),
    ]
    prlimit = ctx.tool("prlimit")
    if prlimit:  # as across two machines: each job takes its caller's limits, set by the worker's prlimit
        apart_args = [prlimit, "--nofile=512:", *executor_args]
        variants.insert(1, Variant(EXECUTOR_APART, shlex.join(apart_args),
                                   lambda: float(run_json(apart_args, 600)["seconds"])))
    if ctx.tool("parallel"):
        variants.append(_shell(PARALLEL, f"seq {n} | parallel --will-cite -j2 true"))
    else:
        section.notes.append("GNU parallel not measured: not installed (bench/run installs it).")
    hq_python = ctx.hyperqueue_python()
    if hq_python is not None:
        hq_dir = ctx.work / "hyperqueue"
        hq_dir.mkdir(exist_ok=True)
        hq_args = [str(hq_python), str(HELPERS / "hq_burst.py"), str(n), str(hq_dir)]
        variants.append(Variant(HYPERQUEUE, shlex.join(hq_args), lambda: float(run_json(hq_args, 600)["seconds"])))
    else:
        section.notes.append("HyperQueue not measured: " + ("never in --quick." if ctx.quick else
                             "its PyPI package is not in bench/.venv (bench/run installs it)."))
    return variants


def _shell(name: str, command: str) -> Variant:
    return Variant(name, command, lambda: time_shell(command, 900))


def _profile(ctx: Context, cluster: Cluster, section: Section) -> None:
    """py-spy of the server, the worker and the Executor's process during bursts."""
    if ctx.py_spy() is None or cluster.server is None or cluster.worker is None:
        section.notes.append("No profile: py-spy is not available (bench/run installs it into bench/.venv).")
        return
    seconds = ctx.sizes.profile_seconds
    args = [str(ctx.python), str(HELPERS / "executor_burst.py"), cluster.address, str(ctx.sizes.burst_jobs),
            "--for", str(seconds + 2)]
    client = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        spies = {name: py_spy_start(ctx, pid, f"throughput-{name}", seconds)
                 for name, pid in (("server", cluster.server.pid), ("worker", cluster.worker.pid),
                                   ("executor", client.pid))}
        for name, started in spies.items():
            section.profiles.append((f"py-spy of the {name} during Executor bursts", py_spy_report(started)))
    finally:
        client.wait(timeout=120)
