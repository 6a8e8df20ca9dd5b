"""Scenario 4: 1 GiB through `jq cat` (stdin in, stdout out) against a local
pipe, `ssh localhost cat` (an sshd of our own) and `srun cat`."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import (
    Cluster,
    Context,
    Processes,
    Row,
    Section,
    Stats,
    Target,
    free_port,
    py_spy_report,
    py_spy_start,
    time_shell,
)

JQ = "jq cat"
PIPE = "local pipe (cat)"
SSH = "ssh localhost cat"
SRUN = "srun cat"
TARGET = 750.0


@dataclass
class Pipeline:
    """``head -c N /dev/zero | jq cat | READER`` with every pid known."""

    head: subprocess.Popen[bytes]
    jq: subprocess.Popen[bytes]
    reader: subprocess.Popen[bytes] | None

    def wait(self, timeout: float) -> int:
        procs = [self.head, self.jq, *([self.reader] if self.reader else [])]
        return max(abs(p.wait(timeout=timeout)) for p in procs)


def start_pipeline(cluster: Cluster, nbytes: int, reader: list[str] | None = None) -> Pipeline:
    head = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
    out = subprocess.PIPE if reader else subprocess.DEVNULL
    jq = subprocess.Popen(cluster.jq("cat"), stdin=head.stdout, stdout=out)
    assert head.stdout is not None
    head.stdout.close()
    sink = None
    if reader:
        sink = subprocess.Popen(reader, stdin=jq.stdout, stdout=subprocess.PIPE)
        assert jq.stdout is not None
        jq.stdout.close()
    return Pipeline(head, jq, sink)


def run(ctx: Context, cluster: Cluster, slurm: bool) -> Section:
    n = ctx.sizes.stream_bytes
    section = Section("streaming", f"4. Streaming {_size(n)} through one job")
    variants = {JQ: f"head -c {n} /dev/zero | {shlex.join(cluster.jq('cat'))} > /dev/null",
                PIPE: f"head -c {n} /dev/zero | cat > /dev/null"}
    ssh = None if ctx.quick else start_sshd(ctx.procs, ctx.work)
    if ssh:
        variants[SSH] = f"head -c {n} /dev/zero | {shlex.join(ssh)} cat > /dev/null"
    else:
        section.notes.append("`ssh localhost cat` not measured: " + ("never in --quick." if ctx.quick else
                             "no sshd (bench/run installs openssh-server)."))
    if slurm:
        variants[SRUN] = f"head -c {n} /dev/zero | srun -N1 cat > /dev/null"
    else:
        section.notes.append("`srun cat` not measured: no single-node Slurm in this run.")
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(ctx.sizes.stream_rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            ctx.log(f"streaming round {rnd + 1}: {name}")
            section.attempt(name, lambda name=name: samples[name].append(
                n / 1e6 / time_shell(variants[name], 900, env=dict(os.environ))))
    for name in names:
        stats = Stats.of(samples[name]) if samples[name] else None
        section.rows.append(Row(name, "MB/s", stats, variants[name], "" if stats else "crashed: see above"))
        section.commands.append(variants[name])
    section.ratio("jq cat / local pipe", JQ, PIPE)
    of_ssh = section.ratio("jq cat / ssh", JQ, SSH)
    section.ratio("jq cat / srun cat", JQ, SRUN)
    section.targets += [
        Target(f"`jq cat` ≥ {TARGET:.0f} MB/s", section.median(JQ), TARGET, True, "MB/s"),
        Target("`jq cat` ≥ 6 × `ssh localhost cat`", of_ssh, 6.0, True, "×", "" if ssh else "no ssh in this run"),
    ]
    section.notes.append("MB = 10^6 bytes; each figure is bytes / wall-clock seconds of the whole pipeline.")
    if ctx.profile or section.targets[0].met is False:
        _profile(ctx, cluster, section)
    return section


def _size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def start_sshd(procs: Processes, work: Path) -> list[str] | None:
    """An sshd of our own on a loopback port, with throwaway keys; the ssh
    command that reaches it (None if there is no sshd)."""
    sshd = "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        return None
    d = work / "sshd"
    d.mkdir(exist_ok=True)
    for key in ("host", "user"):
        if not (d / key).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAcceptEnv none\n")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    procs.start([sshd, "-D", "-e", "-f", str(d / "sshd_config")], log="sshd")
    ssh = ["ssh", "-p", str(port), "-i", str(d / "user"), "-o", "StrictHostKeyChecking=no", "-o",
           "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "127.0.0.1"]
    for _ in range(50):
        if subprocess.run([*ssh, "true"], capture_output=True, timeout=30).returncode == 0:
            return ssh
        subprocess.run(["sleep", "0.1"])
    return None


def _profile(ctx: Context, cluster: Cluster, section: Section) -> None:
    """py-spy of the server, the worker and jq while a stream runs."""
    if ctx.py_spy() is None or cluster.server is None or cluster.worker is None:
        section.notes.append("No profile: py-spy is not available (bench/run installs it into bench/.venv).")
        return
    seconds = ctx.sizes.profile_seconds
    pipeline = start_pipeline(cluster, 64 << 30)  # longer than the profile: stopped after it
    try:
        spies = {name: py_spy_start(ctx, pid, f"streaming-{name}", seconds)
                 for name, pid in (("server", cluster.server.pid), ("worker", cluster.worker.pid),
                                   ("jq", pipeline.jq.pid))}
        for name, started in spies.items():
            section.profiles.append((f"py-spy of the {name} during `jq cat`", py_spy_report(started)))
    finally:
        pipeline.head.kill()
        pipeline.wait(60)
