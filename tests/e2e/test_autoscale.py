"""End-to-end: jobqueue-server --spawn starts local workers when jobs wait (no Slurm)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.timeout(90)

#: A spawned worker that runs one job and leaves.
ONCE = "exec jobqueue-worker --once --kill-grace 1"


def spawned_workers(server: subprocess.Popen[bytes]) -> int:
    """How many jobqueue-worker processes the server's spawn commands are running now."""
    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    count = 0
    for child in children:
        try:
            if any(part.endswith("jobqueue-worker") for part in child.cmdline()[:2]):
                count += 1
        except psutil.Error:
            pass
    return count


def most_spawned_at_once(log: str) -> int:
    """Replay the server's log: the most spawned workers starting or connected at once."""
    starting: set[str] = set()
    connected: set[str] = set()
    most = 0
    for line in log.splitlines():
        words = line.split()
        if len(words) < 4 or words[1] != "server":
            continue
        fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
        kind = words[2]
        if kind == "spawn":
            starting.add(fields["spawn"])
        elif kind == "spawn-failed":
            starting.discard(fields["spawn"])
        elif kind == "worker-joined" and "spawn" in fields:
            starting.discard(fields["spawn"])
            connected.add(fields["worker"])
        elif kind in ("worker-left", "worker-lost"):
            connected.discard(fields["worker"])
        most = max(most, len(starting) + len(connected))
    return most


def test_burst_with_no_workers_spawns_at_most_max_and_they_leave(tcp_cluster: Cluster) -> None:
    server = tcp_cluster.server("--spawn", ONCE, "--spawn-max", "3")
    jobs = [tcp_cluster.popen_jq("sh", "-c", f"echo out {i}; echo err {i} >&2; exit {i % 4}") for i in range(20)]
    results = []
    for proc in jobs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    assert results == [(i % 4, f"out {i}\n".encode(), f"err {i}\n".encode()) for i in range(20)]
    wait_for(lambda: spawned_workers(server) == 0, 15, "spawned workers to exit")
    status = wait_for(lambda: (s := tcp_cluster.status()) and not s["workers"] and s, 15, "workers to disappear")
    assert status["jobs"] == [] and status["spawning"] == []
    log = tcp_cluster.log_text()
    assert most_spawned_at_once(log) == 3
    assert log.count("spawn-arrived") == 20  # one --once worker per job
    assert "spawn-failed" not in log and "worker-lost" not in log  # they said goodbye


def test_spawn_gets_address_tags_and_id_and_shows_in_status(tcp_cluster: Cluster) -> None:
    env_file = tcp_cluster.tmp / "spawn-env"
    command = f'echo "$JOBQUEUE_SERVER|$JOBQUEUE_SPAWN_TAGS|$JOBQUEUE_SPAWN_ID" >> {env_file}; exec sleep 60'
    tcp_cluster.server("--spawn", command, "--spawn-tags", "gpu,big", "--spawn-max", "1")
    job = tcp_cluster.popen_jq("--tag", "gpu", "true")
    wait_for(lambda: env_file.exists() and env_file.read_text().count("\n") == 1, 10, "the spawn command to run")
    address, tags, spawn_id = env_file.read_text().strip().split("|")
    assert (address, tags) == (tcp_cluster.endpoint, "big,gpu")
    status = tcp_cluster.status()
    assert status is not None
    assert [s["spawn_id"] for s in status["spawning"]] == [spawn_id]
    (waiting,) = status["jobs"]
    assert "1 spawned worker(s) starting" in waiting["why"]
    job.kill()


def test_only_jobs_with_spawn_tags_spawn_and_spawned_workers_carry_them(tcp_cluster: Cluster) -> None:
    tcp_cluster.server("--spawn", ONCE + ' --tag "$JOBQUEUE_SPAWN_TAGS"', "--spawn-tags", "gpu")
    other = tcp_cluster.popen_jq("--tag", "fpga", "echo", "never")
    wait_for(lambda: any("not autoscaled" in j["why"] for j in tcp_cluster.jobs()), 10, "the fpga job to wait")
    (waiting,) = tcp_cluster.jobs()
    assert waiting["why"] == "no worker is connected; not autoscaled: tag fpga is not in --spawn-tags"
    r = tcp_cluster.jq("--tag", "gpu", "echo", "on gpu")
    assert (r.returncode, r.stdout) == (0, b"on gpu\n")
    assert "worker-joined" in tcp_cluster.log_text() and "tags=gpu" in tcp_cluster.log_text()
    assert tcp_cluster.log_text().count("server spawn ") == 1
    assert other.poll() is None
    other.kill()


def test_failing_spawn_command_backs_off(tcp_cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    tcp_cluster.server("--spawn", f"date +%s.%N >> {runs}; exit 3")
    job = tcp_cluster.popen_jq("true")
    wait_for(lambda: "spawn-failed" in tcp_cluster.log_text(), 10, "the spawn to fail")
    assert "the command exited with status 3 before a worker connected" in tcp_cluster.log_text()
    wait_for(lambda: any("failed to connect 1 time(s)" in j["why"] for j in tcp_cluster.jobs()), 10,
             "status to tell")
    # back-off: the second attempt 2 s after the first failed, the third 4 s after that
    wait_for(lambda: runs.read_text().count("\n") >= 2, 10, "the second attempt")
    first, second = (float(t) for t in runs.read_text().split()[:2])
    assert 1.9 <= second - first <= 4
    assert runs.read_text().count("\n") == 2
    job.kill()


def test_no_spawn_while_an_idle_worker_can_take_the_job(tcp_cluster: Cluster) -> None:
    tcp_cluster.server("--spawn", ONCE)
    tcp_cluster.worker()
    r = tcp_cluster.jq("echo", "by the permanent worker")
    assert r.returncode == 0
    assert "server spawn " not in tcp_cluster.log_text()
