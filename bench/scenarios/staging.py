"""Scenario 7: `jq --stage` (issue 13) on a generated tree, against `tar c | ssh tar x`
and `rsync -a` over ssh (an sshd of our own on loopback).

- cold: the worker's cache and jq's stat cache empty;
- warm: the same tree again (nothing changed), next to plain `jq true`;
- one change: one file rewritten before each run; each run is compared with a run of the
  unchanged tree made in the same minute (the machine's load drifts), once the change is
  older than jq's stat cache's 2 s "too recent to trust" (the first run after that hashes
  the file once more: measured too);
- fetch-back: a job that rewrites 1,000 files, which come back.

jq starts a stage watcher for the tree (as it does for any tree of 1,000 files or more), so
the warm runs list only what changed; the scenario stops it at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness import Cluster, Command, Context, Row, Section, Stats, Target, ratio, time_commands, time_shell

from jobqueue.staging import watchclient
from scenarios.streaming import start_sshd

FULL_TREE = (100, 100, 20_000)  # directories, files per directory, bytes per file: 10,000 files, 200 MB
QUICK_TREE = (4, 25, 10_000)
FETCH_DIRS = 10  # fetch-back: every file of the first 10 directories (1,000 in the full tree)
RACY_S = 2.1  # jq's stat cache trusts a file changed at least this long before a scan (scan.RACY_NS)


def make_tree(root: Path, dirs: int, files: int, size: int) -> int:
    if root.exists():
        shutil.rmtree(root)
    total = 0
    for d in range(dirs):
        (root / f"d{d:03}").mkdir(parents=True)
        for f in range(files):
            data = os.urandom(size)
            (root / f"d{d:03}" / f"f{f:03}.dat").write_bytes(data)
            total += len(data)
    return total


def run(ctx: Context) -> Section:
    dirs, files, size = QUICK_TREE if ctx.quick else FULL_TREE
    section = Section("staging", f"7. Staging: `jq --stage` of {dirs * files:,} files")
    # outside the repository: bench/.work is git-ignored, and --stage leaves out what git ignores
    work = Path(tempfile.gettempdir()) / f"jobqueue-bench-staging{'-quick' if ctx.quick else ''}"
    tree = work / "tree"
    total = make_tree(tree, dirs, files, size)
    cache = work / "worker-cache"
    stat_home = work / "stat-cache"
    cluster = Cluster(ctx, "staging")
    cluster.start_server()
    rounds = 2 if ctx.quick else 3
    env = dict(os.environ, XDG_CACHE_HOME=str(stat_home))
    stage = shlex.join(cluster.jq("--stage", str(tree), "true"))
    samples: dict[str, list[float]] = {"cold": [], "one change": [], "unchanged": [], "after a change": [],
                                       "fetch-back": []}
    try:
        for rnd in range(rounds):
            ctx.log(f"staging round {rnd + 1}: cold")
            if cluster.worker is not None:
                ctx.procs.stop(cluster.worker)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(stat_home, ignore_errors=True)
            _start_worker(ctx, cluster, cache)
            section.attempt("cold", lambda: samples["cold"].append(time_shell(stage, 900, env=env)))
        # warm (nothing changed) next to plain jq, alternating
        warm, invocations = time_commands(
            ctx, "staging-warm", [Command("jq --stage (warm)", cluster.jq("--stage", str(tree), "true")),
                                  Command("jq true", cluster.jq("true"))],
            rounds=rounds, runs=3 if ctx.quick else 5, env=env)
        section.commands += invocations
        victim = tree / "d000" / "f000.dat"
        for _ in range(rounds * 3):
            victim.write_bytes(os.urandom(size))
            section.attempt("one change", lambda: samples["one change"].append(time_shell(stage, 300, env=env)))
            time.sleep(0 if ctx.quick else RACY_S)
            section.attempt("after a change",
                            lambda: samples["after a change"].append(time_shell(stage, 300, env=env)))
            section.attempt("unchanged", lambda: samples["unchanged"].append(time_shell(stage, 300, env=env)))
        touch = "for d in " + " ".join(f"d{d:03}" for d in range(min(FETCH_DIRS, dirs))) + \
            "; do for f in $d/*.dat; do printf x >> \"$f\"; done; done"
        fetch = shlex.join(cluster.jq("--stage", str(tree), "sh", "-c", touch))
        fetched = min(FETCH_DIRS, dirs) * files * (size + 1)
        for _ in range(rounds):
            section.attempt("fetch-back", lambda: samples["fetch-back"].append(time_shell(fetch, 900, env=env)))
        for _ in range(2):  # (the first stages what the fetch-back job changed)
            verbose = subprocess.run(cluster.jq("-v", "--stage", str(tree), "true"), env=env, capture_output=True,
                                     timeout=300).stderr.decode(errors="replace")
        section.notes.append("What jq -v said of a warm stage: "
                             + "; ".join(line.removeprefix("jq: ") for line in verbose.splitlines()) + ".")
    finally:
        cluster.stop()
        shutil.rmtree(cache, ignore_errors=True)
        _stop_watcher(ctx, tree)
    mb = total / 1e6
    _row(section, "jq --stage, cold", "MB/s", [mb / s for s in samples["cold"]], stage)
    for name in ("jq --stage (warm)", "jq true"):
        _row(section, name, "ms", [s * 1000 for s in warm[name]], "")
    _row(section, "jq --stage, one file changed", "ms", [s * 1000 for s in samples["one change"]], stage)
    _row(section, "jq --stage, unchanged, next to the changes", "ms", [s * 1000 for s in samples["unchanged"]], stage)
    _row(section, "jq --stage, unchanged, first run after a change", "ms",
         [s * 1000 for s in samples["after a change"]], stage)
    # the fetch-back job is staged first too: its time beyond a warm `jq --stage DIR true` is the fetching
    staged_s = (section.median("jq --stage (warm)") or 0.0) / 1000
    _row(section, f"jq --stage fetching back {min(FETCH_DIRS, dirs) * files:,} changed files", "MB/s",
         [fetched / 1e6 / max(s - staged_s, 1e-3) for s in samples["fetch-back"]], fetch)
    section.commands += [stage, fetch]
    _peers(ctx, section, tree, work, total, fetched, min(FETCH_DIRS, dirs), rounds)
    warm_ms, plain_ms = section.median("jq --stage (warm)"), section.median("jq true")
    overhead = None if warm_ms is None or plain_ms is None else warm_ms - plain_ms
    of_tar = section.ratio("cold --stage / tar | ssh (throughput)", "jq --stage, cold", "tar c | ssh tar x")
    rsync_warm = section.median("rsync -a over ssh, unchanged tree")
    speedup = ratio(rsync_warm, warm_ms)
    section.ratios.append(("rsync (unchanged) / warm --stage (time)", speedup))
    one = section.ratio("one change / unchanged next to it (time)", "jq --stage, one file changed",
                        "jq --stage, unchanged, next to the changes")
    of_rsync = section.ratio("fetch-back / rsync pull (throughput)",
                             f"jq --stage fetching back {min(FETCH_DIRS, dirs) * files:,} changed files",
                             "rsync -a over ssh, pulling the changed files")
    section.targets += [
        Target("cold stage ≥ `tar | ssh` throughput", of_tar, 1.0, True, "×"),
        Target("warm stage adds ≤ 100 ms to `jq true`", overhead, 100.0, False, "ms"),
        Target("warm stage ≥ 10 × faster than `rsync` over ssh", speedup, 10.0, True, "×"),
        Target("one changed file within 20 % of the unchanged case", one, 1.2, False, "×"),
        Target("fetch-back ≥ `rsync` over ssh throughput", of_rsync, 1.0, True, "×"),
    ]
    section.notes.append(f"Tree: {dirs} directories × {files} files × {size:,} random bytes ({mb:.0f} MB). "
                         "MB = 10^6 bytes. Cold: a fresh worker with an empty cache and an empty stat cache; "
                         "the throughput counts the whole `jq --stage DIR true` (scan, hash, transfer, job). "
                         "Fetch-back: the job's time minus the median warm `jq --stage DIR true` (its staging), "
                         "as rsync's pull is compared with the fetching alone.")
    return section


def _stop_watcher(ctx: Context, tree: Path) -> None:
    """Stop the stage watcher jq started for the tree, and see it end."""
    pid = watchclient.stop(os.fsencode(tree))
    deadline = time.monotonic() + 10
    while pid is not None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # ended (its parent, init, reaps it)
        except OSError:
            return
        time.sleep(0.01)
    if pid is not None:
        ctx.log(f"the stage watcher {pid} did not end when asked: killed")
        os.kill(pid, 9)


def _start_worker(ctx: Context, cluster: Cluster, cache: Path) -> None:
    args = [str(ctx.bin / "jobqueue-worker"), cluster.address, "--name", f"{cluster.name}-w", "--cache-dir",
            str(cache)]
    cluster.worker = ctx.procs.start(args, log=f"{cluster.name}-worker")
    deadline = time.monotonic() + 20
    while not cluster._worker_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("the staging worker did not connect")
        time.sleep(0.05)


def _row(section: Section, name: str, unit: str, values: list[float], command: str) -> None:
    stats = Stats.of(values) if values else None
    section.rows.append(Row(name, unit, stats, command, "" if stats else "crashed: see above"))


def _peers(ctx: Context, section: Section, tree: Path, work: Path, total: int, fetched: int, fetch_dirs: int,
           rounds: int) -> None:
    """tar | ssh (cold) and rsync over ssh (cold, unchanged, pulling the changed files)."""
    ssh = None if ctx.quick else start_sshd(ctx.procs, ctx.work)
    if ssh is None:
        section.notes.append("`tar | ssh` and `rsync` not measured: " + ("never in --quick." if ctx.quick else
                             "no sshd (bench/run installs openssh-server)."))
        return
    dest = work / "dest"
    ssh_text = shlex.join(ssh)
    quoted = shlex.quote(str(dest))
    tar = (f"tar c -C {shlex.quote(str(tree))} . | {ssh_text} "
           f"'rm -rf {quoted} && mkdir -p {quoted} && tar x -C {quoted}'")
    _row(section, "tar c | ssh tar x", "MB/s", _throughput(tar, total / 1e6, rounds, section), tar)
    rsync = ctx.tool("rsync")
    if rsync is None:
        section.notes.append("`rsync` not measured: not installed (bench/run installs it).")
        return
    remote_shell = shlex.join(ssh[:-1])  # rsync adds the host
    copy = f"rsync -a -e {shlex.quote(remote_shell)} {shlex.quote(str(tree))}/ 127.0.0.1:{shlex.quote(str(dest))}/"
    cold = f"rm -rf {shlex.quote(str(dest))} && {copy}"
    _row(section, "rsync -a over ssh, cold", "MB/s", _throughput(cold, total / 1e6, rounds, section), cold)
    time_shell(copy, 900)
    times = []
    for _ in range(rounds * 3):
        section.attempt("rsync unchanged", lambda: times.append(time_shell(copy, 300) * 1000))
    _row(section, "rsync -a over ssh, unchanged tree", "ms", times, copy)
    back = work / "back"
    subset = " ".join(f"127.0.0.1:{shlex.quote(str(dest))}/d{d:03}" for d in range(fetch_dirs))
    pull = (f"rm -rf {shlex.quote(str(back))} && mkdir -p {shlex.quote(str(back))} && "
            f"rsync -a -e {shlex.quote(remote_shell)} {subset} {shlex.quote(str(back))}/")
    _row(section, "rsync -a over ssh, pulling the changed files", "MB/s",
         _throughput(pull, fetched / 1e6, rounds, section), pull)
    section.commands += [tar, cold, copy, pull]


def _throughput(command: str, mb: float, rounds: int, section: Section) -> list[float]:
    values: list[float] = []
    for _ in range(rounds):
        section.attempt(command[:40], lambda: values.append(mb / time_shell(command, 900)))
    return values

