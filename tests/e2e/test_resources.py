"""End-to-end: resources (GPUs, CPUs, memory, named) with real servers, workers and jq.
No GPU needed: GPUs are indices given by list, or listed by a fake nvidia-smi."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from jobqueue.confine import ConfineError, MemoryCgroups
from tests.conftest import Cluster, wait_for

#: A job that records what it was given and when it ran: "<value> <start> <end>" per line.
RECORD = 'start=$(date +%s.%N); sleep {seconds}; echo "${var} $start $(date +%s.%N)" >> {log}'


def _record(var: str, log: Path, seconds: float) -> list[str]:
    return ["sh", "-c", RECORD.format(var="{" + var + "}", seconds=seconds, log=log)]


def _intervals(log: Path) -> list[tuple[str, float, float]]:
    rows = []
    for line in log.read_text().splitlines():
        value, start, end = line.rsplit(" ", 2)
        rows.append((value, float(start), float(end)))
    return rows


def _most_at_once(rows: list[tuple[str, float, float]], weight: object = None) -> float:
    """The largest total (of ``weight(value)``, default 1 per job) running at one instant."""
    points = sorted({start for _, start, _ in rows})
    best = 0.0
    for t in points:
        best = max(best, sum(weight(v) if callable(weight) else 1 for v, s, e in rows if s <= t < e))
    return best


def _run_all(cluster: Cluster, commands: list[list[str]], timeout: float = 60) -> list[int]:
    procs = [cluster.popen_jq(*command) for command in commands]
    codes = []
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"jq did not end: {cluster.log_text()[-3000:]}") from None
        codes.append(proc.returncode)
    return codes


def test_one_gpu_per_job_on_a_four_gpu_box(cluster: Cluster) -> None:
    """8 jobs of --gpus 1 on a 4-GPU worker run 4 at a time; no GPU index is held twice at once."""
    cluster.server()
    cluster.worker("-j", "4", "--gpus", "0,1,2,3", name="box")
    log = cluster.tmp / "gpus.log"
    assert _run_all(cluster, [["--gpus", "1", *_record("CUDA_VISIBLE_DEVICES", log, 1.0)]] * 8) == [0] * 8
    rows = _intervals(log)
    assert len(rows) == 8 and {v for v, _, _ in rows} <= {"0", "1", "2", "3"}
    assert _most_at_once(rows) == 4
    for gpu in "0123":
        mine = sorted((s, e) for v, s, e in rows if v == gpu)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(mine, mine[1:])), (gpu, mine)


def test_the_job_is_told_what_it_got(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker("--cpus", "2", "--gpus", "0,1,2,3", "--resource", "fpga=a,b", "--resource", "licence=3",
                   name="box")
    show = "echo $CUDA_VISIBLE_DEVICES/$JOBQUEUE_GPUS/$JOBQUEUE_CPUS/$OMP_NUM_THREADS/" \
           "$JOBQUEUE_RESOURCE_FPGA/$JOBQUEUE_RESOURCE_LICENCE"
    r = cluster.jq("--gpus", "2", "--cpus", "2", "--resource", "fpga=1", "--resource", "licence=2", "sh", "-c", show)
    assert (r.returncode, r.stdout) == (0, b"0,1/0,1/2/2/a/2\n"), r.stderr
    r = cluster.jq("--cpus", "1", "-e", "OMP_NUM_THREADS=7", "sh", "-c", show)  # jq's environment wins
    assert (r.returncode, r.stdout) == (0, b"//1/7//\n"), r.stderr  # no GPU asked for: none visible
    told = "env | grep -c -e ^JOBQUEUE_CPUS= -e ^JOBQUEUE_RESOURCE_ -e ^OMP_NUM_THREADS="
    r = cluster.jq("sh", "-c", f"{show}; {told}")  # asked for nothing: told nothing
    assert (r.returncode, r.stdout) == (1, b"/////\n0\n"), r.stderr


def test_mixed_cpus_never_exceed_the_workers(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker("--cpus", "4", name="box")
    log = cluster.tmp / "cpus.log"
    sizes = [3, 1, 2, 2, 1, 3, 1, 2]
    commands = [["--cpus", str(n), *_record("JOBQUEUE_CPUS", log, 0.4)] for n in sizes]
    assert _run_all(cluster, commands) == [0] * len(sizes)
    rows = _intervals(log)
    assert sorted(int(v) for v, _, _ in rows) == sorted(sizes)
    assert _most_at_once(rows, lambda v: int(v)) <= 4


def test_bind_cpus_pins_the_job(cluster: Cluster) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    cluster.server()
    cluster.worker("--cpus", "2", "--bind-cpus", name="box")
    assert cluster.jq("--cpus", "1", "nproc").stdout == b"1\n"
    assert cluster.jq("--cpus", "2", "nproc").stdout == b"2\n"


def test_a_two_gpu_job_is_not_starved_by_one_gpu_jobs(cluster: Cluster) -> None:
    cluster.server("--reserve-after", "1s")
    cluster.worker("-j", "4", "--gpus", "0,1", name="box")
    stop = threading.Event()
    small_runs: list[int] = []

    def stream() -> None:  # always two 1-GPU jobs running and more waiting
        procs: list[subprocess.Popen[bytes]] = []
        while not stop.is_set():
            procs = [p for p in procs if p.poll() is None]
            while len(procs) < 4:
                procs.append(cluster.popen_jq("--gpus", "1", "sleep", "0.3"))
                small_runs.append(1)
            time.sleep(0.05)
        for proc in procs:
            proc.wait(30)

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        wait_for(lambda: len(small_runs) >= 6, 20, "the stream of small jobs")
        big = cluster.jq("--gpus", "2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES", timeout=20)
        assert (big.returncode, big.stdout) == (0, b"0,1\n"), big.stderr
    finally:
        stop.set()
        feeder.join(60)
    assert len(small_runs) > 8  # the small jobs kept coming while the big one waited


def test_status_shows_used_total_and_why_a_job_waits(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker("-j", "4", "--gpus", "0,1", name="a")
    cluster.worker("-j", "4", "--gpus", "0,1", name="b")
    running = [cluster.popen_jq("--gpus", "1", "sleep", "30") for _ in range(3)]  # 2 on one worker, 1 on the other
    wait_for(lambda: sum(j["state"] == "running" for j in cluster.jobs()) == 3, 10, "three running jobs")
    waiting = cluster.popen_jq("--gpus", "2", "true")
    lic = cluster.popen_jq("--resource", "licence=1", "true")
    jobs = wait_for(lambda: [j for j in cluster.jobs() if j["state"] == "queued"] if
                    len([j for j in cluster.jobs() if j["state"] == "queued"]) == 2 else None, 10, "two queued")
    whys = sorted(j["why"] for j in jobs)
    assert whys == ["needs gpus=2: no worker has 2 free (2 workers have 4 in total)",
                    "no connected worker has resource licence"], whys
    text = subprocess.run(["jobqueue", "status", "-s", cluster.endpoint], capture_output=True, text=True,
                          env=cluster.env(), timeout=10).stdout
    assert "gpus=2/2" in text and "gpus=1/2" in text and "NEEDS" in text and "licence=1" in text, text
    for proc in (*running, waiting, lic):
        proc.send_signal(signal.SIGINT)
    for proc in (*running, waiting, lic):
        proc.wait(10)


def test_gpus_auto_reads_a_fake_nvidia_smi(cluster: Cluster) -> None:
    fake = cluster.tmp / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\n[ \"$1\" = -L ] || exit 2\n"
                                     "echo 'GPU 0: NVIDIA A100 (UUID: GPU-a)'\n"
                                     "echo 'GPU 1: NVIDIA A100 (UUID: GPU-b)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    cluster.server()
    env = cluster.env(PATH=f"{fake}:{cluster.env()['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cluster.spawn(["jobqueue-worker", cluster.endpoint, "--name", "auto", "-j", "2", "--gpus", "auto"],
                  log="worker-auto", env=env)
    cluster.wait_worker("auto")
    status = cluster.status()
    assert status is not None
    use = {u["name"]: u["total"] for u in status["workers"][0]["resources"]}
    assert use["gpus"] == 2
    r = cluster.jq("--gpus", "2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.stdout == b"0,1\n"


@pytest.mark.parametrize("args, error", [
    (["--gpus", "-1"], "--gpus must be at least 0"),
    (["--mem", "12Q"], "--mem: bad size '12Q'"),
    (["--resource", "=3"], "a resource name is a letter"),
    (["--cpus", "0"], "--cpus must be at least 1"),
])
def test_bad_requests_are_refused_and_nothing_is_queued(cluster: Cluster, args: list[str], error: str) -> None:
    cluster.server()
    r = cluster.jq(*args, "true")
    assert r.returncode == 255
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jq: ") and error in lines[0], lines
    assert cluster.jobs() == []


def test_more_gpus_than_any_worker_has_says_so_and_gives_up_with_queue_timeout(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker("--gpus", "4", name="box")
    r = cluster.jq("--gpus", "64", "--queue-timeout", "1s", "true")
    assert r.returncode == 255
    err = r.stderr.decode()
    assert "needs gpus=64: no connected worker has that much (the most is 4)" in err
    assert "did not start within 1s" in err
    assert cluster.jobs() == []


def test_requeue_returns_what_a_lost_job_held(cluster: Cluster) -> None:
    cluster.server()
    lost = cluster.worker("-j", "2", "--gpus", "0,1", name="a")
    job = cluster.popen_jq("--gpus", "2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 1")
    wait_for(lambda: any(j["state"] == "running" and j["worker"] == "a" for j in cluster.jobs()), 10, "job on a")
    os.kill(lost.pid, signal.SIGKILL)
    lost.wait(5)
    cluster.worker("-j", "2", "--gpus", "0,1", name="b")
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    assert out.endswith(b"0,1\n") and b"worker a was lost" in err
    status = cluster.status()
    assert status is not None
    assert {u["name"]: u["used"] for u in status["workers"][0]["resources"]}["gpus"] == 0


def _cgroups_available() -> str:
    try:
        MemoryCgroups.setup()
    except ConfineError as e:
        return str(e)
    return ""


def test_enforce_mem_kills_a_job_past_its_memory_or_is_refused(cluster: Cluster) -> None:
    cluster.server()
    refusal = _cgroups_available()
    worker = cluster.worker("--mem", "1G", "-j", "2", "--enforce-mem", name="box", wait=not refusal)
    if refusal:  # no cgroup we may use here: the worker says so at start
        assert worker.wait(10) == 255
        assert "--enforce-mem needs a memory cgroup" in cluster.log_text()
        return
    grow = "x = bytearray(300 << 20); print('survived')"
    r = cluster.jq("--mem", "64M", "python3", "-c", grow)
    assert r.returncode == 137 and b"survived" not in r.stdout
    assert r.stderr.decode().splitlines() == [f"jq: job {r.stderr.decode().split()[2]} exceeded its memory (64M) "
                                              "and was killed"]
    ok = cluster.jq("--mem", "512M", "python3", "-c", grow)
    assert (ok.returncode, ok.stdout) == (0, b"survived\n"), ok.stderr


def test_the_python_api_asks_for_resources_too(cluster: Cluster) -> None:
    import jobqueue

    cluster.server()
    cluster.worker("-j", "2", "--gpus", "0,1", "--mem", "4G", "--resource", "licence=1", name="box")
    show = ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES $JOBQUEUE_CPUS $JOBQUEUE_MEM $JOBQUEUE_RESOURCE_LICENCE"]
    r = jobqueue.run(show, capture_output=True, server=cluster.endpoint, gpus=2, mem="1G",
                     resources={"licence": 1})
    assert r.stdout == f"0,1 1 {1 << 30} 1\n".encode(), r
    with jobqueue.Executor(server=cluster.endpoint) as pool:
        futures = [pool.submit(show, capture_output=True, gpus=1, cpus=1) for _ in range(4)]
        assert {f.result().stdout.split()[0] for f in futures} <= {b"0", b"1"}
    for bad, error in [({"gpus": -1}, "gpus must be at least 0"), ({"mem": "12Q"}, "bad size '12Q'"),
                       ({"resources": {"": 3}}, "resource name"), ({"cpus": 0}, "at least 1 CPU")]:
        with pytest.raises(ValueError, match=error):
            jobqueue.run(["true"], server=cluster.endpoint, **bad)  # type: ignore[arg-type]
    assert cluster.jobs() == []


def test_spawn_starts_only_workers_whose_resources_fit(cluster: Cluster) -> None:
    options = "$(for r in $JOBQUEUE_SPAWN_RESOURCES; do echo --resource $r; done)"  # what a spawned worker has
    command = f"exec jobqueue-worker --once --kill-grace 1 {options}"
    cluster.server("--spawn", command, "--spawn-resources", "cpus=1 gpus=2", "--spawn-max", "2")
    r = cluster.jq("--gpus", "2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert (r.returncode, r.stdout) == (0, b"0,1\n"), r.stderr  # on a spawned worker with 2 GPUs
    big = cluster.popen_jq("--gpus", "4", "true")
    jobs = wait_for(lambda: [j for j in cluster.jobs() if j["state"] == "queued"], 10, "the 4-GPU job queued")
    assert "not autoscaled: it needs gpus=4, more than --spawn-resources gives" in jobs[0]["why"], jobs
    assert cluster.log_text().count(" spawn ") == 1  # none for the job that could not fit
    big.send_signal(signal.SIGINT)
    assert big.wait(10) == 130
