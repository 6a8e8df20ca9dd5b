"""Workers as Slurm jobs, on a real single-node Slurm (see conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import BIN, HEARTBEAT, Cluster, wait_for
from tests.slurm.conftest import EXAMPLES, Slurm

pytestmark = pytest.mark.timeout(180)

WORKER = EXAMPLES / "worker.sbatch"
ARRAY = EXAMPLES / "worker-array.sbatch"


def slurm_workers(cluster: Cluster) -> dict[str, dict[str, object]]:
    """Connected workers started by Slurm, by name."""
    status = cluster.status(timeout=2) or {"workers": []}
    return {w["name"]: w for w in status["workers"] if w["name"].startswith("slurm-")}


def submit_workers(cluster: Cluster, slurm: Slurm, count: int, idle: str = "60s") -> list[str]:
    env = cluster.env(JOBQUEUE_IDLE_TIMEOUT=idle)
    ids = [slurm.sbatch(WORKER, "-o", str(cluster.tmp / "slurm-%j.out"), env=env) for _ in range(count)]
    wait_for(lambda: set(slurm_workers(cluster)) == {f"slurm-{i}" for i in ids}, 30, "Slurm workers to connect")
    return ids


def server_command(cluster: Cluster) -> list[str]:
    return [str(BIN / "jobqueue-server"), cluster.endpoint, "--heartbeat", str(HEARTBEAT)]


def stop_politely(slurm: Slurm, job_id: str) -> None:
    """SIGTERM to the worker only (the batch shell, which exec'd it), as at the end of an allocation."""
    slurm.run("scancel", "--batch", "--signal=TERM", job_id)


def test_sbatch_workers_run_jobs_with_stdio_and_exit_codes(tcp_cluster: Cluster, slurm: Slurm) -> None:
    tcp_cluster.server()
    ids = submit_workers(tcp_cluster, slurm, 2)
    assert sorted(slurm.jobs()) == sorted(ids)
    for code in (0, 3, 42):
        r = tcp_cluster.jq("sh", "-c", f"echo out; echo err >&2; exit {code}")
        assert (r.returncode, r.stdout, r.stderr) == (code, b"out\n", b"err\n")
    r = tcp_cluster.jq("wc", "-c", input=b"x" * 100_000)
    assert (r.returncode, r.stdout.strip()) == (0, b"100000")
    assert tcp_cluster.jq("sh", "-c", "kill -TERM $$").returncode == 143
    r = tcp_cluster.jq("sh", "-c", 'echo "$FROM_JQ"', env=tcp_cluster.env(FROM_JQ="the client's env"))
    assert r.stdout == b"the client's env\n"
    for job_id in ids:
        stop_politely(slurm, job_id)
    slurm.wait_empty()
    wait_for(lambda: not slurm_workers(tcp_cluster), 10, "the workers to leave")


def test_stopping_a_workers_slurm_job_requeues_its_job_on_another_worker(tcp_cluster: Cluster,
                                                                         slurm: Slurm) -> None:
    tcp_cluster.server()
    ids = submit_workers(tcp_cluster, slurm, 2)
    mark = tcp_cluster.tmp / "first-attempt"
    job = tcp_cluster.popen_jq("sh", "-c", f'if [ -e {mark} ]; then echo second; else touch {mark}; '
                                           'echo first; exec sleep 120; fi')
    wait_for(mark.exists, 15, "the first attempt to start")
    (running,) = [j for j in tcp_cluster.jobs() if j["state"] == "running"]
    first_worker = running["worker"]
    # A plain scancel: Slurm SIGTERMs every process of the allocation, the job
    # included, an instant before the worker itself.
    slurm.run("scancel", first_worker.removeprefix("slurm-"))
    out, err = job.communicate(timeout=30)
    assert (job.returncode, out) == (0, b"first\nsecond\n")
    assert f"worker {first_worker} stopped; running it again".encode() in err
    (other,) = set(ids) - {first_worker.removeprefix("slurm-")}
    assert f"job-finished job={running['job_id']} worker=slurm-{other} status=0" in tcp_cluster.log_text()
    wait_for(lambda: set(slurm.jobs()) == {other}, 15, "the stopped worker's Slurm job to end")
    stop_politely(slurm, other)
    slurm.wait_empty()


def test_spawn_sbatch_runs_a_burst_then_the_workers_leave(tcp_cluster: Cluster, slurm: Slurm) -> None:
    spawn = f"sbatch --parsable -o {tcp_cluster.tmp}/slurm-%j.out {WORKER}"
    tcp_cluster.spawn([*server_command(tcp_cluster), "--spawn", spawn, "--spawn-max", "2"], log="server",
                      env=tcp_cluster.env(JOBQUEUE_IDLE_TIMEOUT="2s", **slurm.env))
    wait_for(lambda: tcp_cluster.status(timeout=0.5) is not None, 10, "server to answer")
    jobs = [tcp_cluster.popen_jq("sh", "-c", f"echo job {i}; echo e{i} >&2; exit {i % 3}") for i in range(20)]
    for i, proc in enumerate(jobs):
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err) == (i % 3, f"job {i}\n".encode(), f"e{i}\n".encode())
    # idle for 2 s, the workers leave and their Slurm jobs end
    slurm.wait_empty(30)
    status = wait_for(lambda: (s := tcp_cluster.status()) and not s["workers"] and s, 10, "the workers to leave")
    assert status["jobs"] == [] and status["spawning"] == []
    log = tcp_cluster.log_text()
    assert 1 <= log.count("server spawn ") <= 2 and "spawn-failed" not in log
    assert log.count("spawn-arrived") == log.count("server spawn ")  # each submitted worker connected
    assert log.count("worker-left") == log.count("server spawn ")  # and left by itself when idle


def test_job_array_starts_one_worker_per_task(tcp_cluster: Cluster, slurm: Slurm) -> None:
    tcp_cluster.server()
    env = tcp_cluster.env(JOBQUEUE_IDLE_TIMEOUT="1s", JOBQUEUE_SPAWN_TAGS="arr")
    array_id = slurm.sbatch(ARRAY, "--array=1-2", "-o", str(tcp_cluster.tmp / "slurm-%A_%a.out"), env=env)
    names = {f"slurm-{array_id}_1", f"slurm-{array_id}_2"}
    wait_for(lambda: set(slurm_workers(tcp_cluster)) == names, 30, "both array workers to connect")
    assert all(w["tags"] == ["arr"] for w in slurm_workers(tcp_cluster).values())
    r = tcp_cluster.jq("--tag", "arr", "echo", "from the array")
    assert (r.returncode, r.stdout) == (0, b"from the array\n")
    slurm.wait_empty(30)  # idle for 1 s: both leave

