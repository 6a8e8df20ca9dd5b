"""Scenario 1: latency of one trivial job (and of one that prints a line), and jq's start-up alone."""

from __future__ import annotations

import os
import subprocess

from harness import HELPERS, Cluster, Command, Context, Row, Section, Stats, Target, import_times, time_commands

JQ_TRUE = "jq true"
JQ_ECHO = "jq echo hello"
LOCAL_TRUE = "local true"
PYTHON_PASS = "python3 -c pass"
SRUN_TRUE = "srun true"
JQ_VERSION = "jq --version"


def run(ctx: Context, cluster: Cluster, slurm: bool) -> Section:
    section = Section("latency", "1. Latency of one trivial job")
    commands = [
        Command(JQ_TRUE, cluster.jq("true")),
        Command(JQ_ECHO, cluster.jq("echo", "hello")),  # a job with output: jq's writer path
        Command(LOCAL_TRUE, ["true"]),
        Command(PYTHON_PASS, [str(ctx.python), "-c", "pass"]),
        Command(JQ_VERSION, [str(ctx.bin / "jq"), "--version"]),
    ]
    if slurm:
        commands.append(Command(SRUN_TRUE, ["srun", "-N1", "true"]))
    else:
        section.notes.append("`srun true` not measured: no single-node Slurm answered "
                             "(bench/run starts one with scripts/slurm-cluster.sh; never in --quick).")
    sizes = ctx.sizes
    samples, invocations = time_commands(ctx, "latency", commands, rounds=sizes.latency_rounds,
                                         runs=sizes.latency_runs, env=dict(os.environ))
    section.commands += invocations
    for c in commands:
        ms = [s * 1000 for s in samples[c.name]]
        section.rows.append(Row(c.name, "ms", Stats.of(ms), c.text))
    srun_ratio = section.ratio("jq true / srun true", JQ_TRUE, SRUN_TRUE) if slurm else None
    python_ratio = section.ratio("jq true / python3 -c pass", JQ_TRUE, PYTHON_PASS)
    section.ratio("jq --version / python3 -c pass", JQ_VERSION, PYTHON_PASS)
    section.ratio("jq true / local true", JQ_TRUE, LOCAL_TRUE)
    section.ratio("jq echo hello / jq true", JQ_ECHO, JQ_TRUE)
    section.targets += [
        Target("`jq true` ≤ 0.9 × `srun true`", srun_ratio, 0.9, False, "×",
               "" if slurm else "no Slurm in this run"),
        Target("`jq true` ≤ 1.6 × `python3 -c pass`", python_ratio, 1.6, False, "×"),
    ]
    if ctx.profile or any(t.met is False for t in section.targets):
        _profile(ctx, cluster, section)
    return section


def _profile(ctx: Context, cluster: Cluster, section: Section) -> None:
    jq_path = str(ctx.bin / "jq")
    section.profiles.append(("`python -X importtime` of `jq -s ADDR true` (top cumulative)",
                             import_times(ctx.python, [jq_path, "-s", cluster.address, "true"])))
    section.profiles.append(("`python -X importtime` of `jq --version`",
                             import_times(ctx.python, [jq_path, "--version"], top=8)))
    modules = subprocess.run([str(ctx.python), str(HELPERS / "jq_modules.py"), cluster.address],
                             capture_output=True, text=True, timeout=60)
    if modules.returncode == 0 and modules.stdout.strip():
        count, _, names = modules.stdout.strip().splitlines()[-1].partition(" ")
        section.profiles.append((f"modules loaded by one `jq true` ({count} in all; top-level ones)", names))
