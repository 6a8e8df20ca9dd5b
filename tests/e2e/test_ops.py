"""End-to-end: operations (tags, slots, ephemeral workers, timeouts, priority,
job control, status filters, metrics, JSON logs) against real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

import jobqueue
from tests.conftest import BIN, Cluster, free_port, wait_for


def control(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobqueue ARGS...`` against the cluster's server."""
    return subprocess.run([str(BIN / "jobqueue"), *args], capture_output=True, text=True, env=cluster.env(),
                          timeout=30)


def status_json(cluster: Cluster, *filters: str) -> dict[str, Any]:
    result = control(cluster, "status", "--json", *filters)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def job_id_of(proc: subprocess.Popen[bytes]) -> str:
    """The job id a ``jq -v`` prints when its job is queued."""
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = re.match(r"jq: job ([0-9a-f]+) queued", line)
    assert match, f"no job id in jq -v output: {line!r}"
    return match.group(1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def barrier_script(tmp: Path) -> Path:
    """``script ME OTHER``: mark ME started, then wait (at most 10 s) for OTHER."""
    script = tmp / "barrier.sh"
    script.write_text(f"#!/bin/sh\ntouch {tmp}/$1\nn=0\n"
                      f"while [ ! -e {tmp}/$2 ]; do sleep 0.02; n=$((n+1)); [ $n -gt 500 ] && exit 9; done\nexit 0\n")
    script.chmod(0o755)
    return script


def gate_command(tmp: Path, name: str) -> list[str]:
    """A job that prints 'up' and ends (0) once the file ``name`` exists."""
    return ["sh", "-c", f"echo up; while [ ! -e {tmp}/{name} ]; do sleep 0.02; done"]


def test_tags_job_waits_for_a_matching_worker_and_status_filters(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker(name="plain")
    proc = cluster.popen_jq("-v", "--tag", "gpu", "--tag", "big", "sh", "-c", "echo ran")
    job_id = job_id_of(proc)
    jobs = wait_for(lambda: status_json(cluster, "--jobs")["jobs"], 10, "job to be queued")
    assert jobs[0]["job_id"] == job_id and jobs[0]["state"] == "queued"
    assert jobs[0]["why"] == "no connected worker has tags big,gpu"
    table = control(cluster, "status").stdout
    assert job_id in table and "no connected worker has tags big,gpu" in table
    plain = next(line.split() for line in table.splitlines() if line.startswith("plain "))
    assert plain[2:4] == ["idle", "1"] and plain[-1] == jobqueue.__version__  # state, slots, version

    cluster.worker("--tag", "gpu", name="gpu-only")  # lacks "big": still waits
    assert status_json(cluster, "--jobs")["jobs"][0]["state"] == "queued"
    cluster.worker("--tag", "gpu", "--tag", "big", "--tag", "debian12", name="gpu-big")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out == b"ran\n"
    assert f"job {job_id} started on worker gpu-big".encode() in err

    only_workers = status_json(cluster, "--workers")
    assert "jobs" not in only_workers
    assert sorted(w["name"] for w in only_workers["workers"]) == ["gpu-big", "gpu-only", "plain"]
    gpu = status_json(cluster, "--workers", "--tag", "gpu", "--tag", "big")["workers"]
    assert [(w["name"], w["tags"]) for w in gpu] == [("gpu-big", ["big", "debian12", "gpu"])]
    assert "workers" not in status_json(cluster, "--jobs")
    assert {"host", "slots", "software", "pid", "state"} <= set(gpu[0])


def test_slots_run_two_jobs_at_once_in_one_worker(cluster: Cluster) -> None:
    cluster.server()
    worker = cluster.worker("-j", "3", name="three")
    script = barrier_script(cluster.tmp)
    a = cluster.popen_jq(str(script), "a", "b")
    b = cluster.popen_jq(str(script), "b", "a")
    assert a.wait(timeout=20) == 0 and b.wait(timeout=20) == 0  # each waited for the other: concurrent
    info = status_json(cluster, "--workers")["workers"][0]
    assert info["slots"] == 3 and info["pid"] == worker.pid
    cluster.worker("--jobs", "auto", name="auto")
    slots = {w["name"]: w["slots"] for w in status_json(cluster, "--workers")["workers"]}
    assert slots == {"three": 3, "auto": os.cpu_count()}


def test_max_jobs_and_once_exit_zero_after_their_jobs(cluster: Cluster) -> None:
    cluster.server()
    worker = cluster.worker("--max-jobs", "2", name="twice")
    procs = [cluster.popen_jq("sh", "-c", f"echo {i} >> {cluster.tmp}/ran") for i in range(3)]
    assert worker.wait(timeout=20) == 0
    wait_for(lambda: sum(proc.poll() is not None for proc in procs) == 2, 10, "two jobs to end")
    finished = [proc for proc in procs if proc.poll() is not None]
    assert [proc.returncode for proc in finished] == [0, 0]
    assert [j["state"] for j in cluster.jobs()] == ["queued"]  # the third one was not taken
    once = cluster.worker("--once", name="once", wait=False)
    assert once.wait(timeout=20) == 0
    for proc in procs:
        assert proc.wait(timeout=10) == 0
    assert sorted((cluster.tmp / "ran").read_text().split()) == ["0", "1", "2"]


def test_idle_timeout_exits_zero(cluster: Cluster) -> None:
    cluster.server()
    job = cluster.popen_jq("true")
    wait_for(cluster.jobs, 10, "the job to be queued")  # so the worker gets it as soon as it joins
    worker = cluster.worker("--idle-timeout", "1", name="idle", wait=False)
    assert job.wait(timeout=15) == 0
    job_end = time.monotonic()
    assert worker.wait(timeout=15) == 0
    assert time.monotonic() - job_end >= 0.5  # idle time counts from the job's end


def test_timeout_kills_the_job_and_its_children_exit_124(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    pids = cluster.tmp / "pids"
    start = time.monotonic()
    r = cluster.jq("--timeout", "0.5s", "sh", "-c", f"sleep 60 & echo $! $$ > {pids}; wait")
    assert r.returncode == 124, r.stderr
    assert time.monotonic() - start < 10
    job_pids = [int(pid) for pid in pids.read_text().split()]
    wait_for(lambda: not any(alive(pid) for pid in job_pids), 5, f"processes {job_pids} to be gone")

    stubborn = cluster.tmp / "stubborn"  # ignores SIGTERM: SIGKILLed after the worker's --kill-grace 1
    r = cluster.jq("--timeout", "0.3", "sh", "-c", f"trap '' TERM; echo $$ > {stubborn}; while :; do sleep 0.05; done")
    assert r.returncode == 124
    assert not alive(int(stubborn.read_text()))


def test_queue_timeout_is_255_with_a_message(cluster: Cluster) -> None:
    cluster.server()
    r = cluster.jq("--queue-timeout", "300ms", "echo", "never")
    assert r.returncode == 255 and r.stdout == b""
    assert r.stderr.startswith(b"jq: ") and b"did not start within 0.3s (--queue-timeout)" in r.stderr
    assert cluster.jobs() == []  # and the server dropped it


def test_priority_then_fifo(cluster: Cluster) -> None:
    cluster.server()
    order = cluster.tmp / "order"
    procs = []
    for label, priority in (("a0", 0), ("b5", 5), ("c1", 1), ("d5", 5), ("e0", 0)):
        procs.append(cluster.popen_jq("--priority", str(priority), "sh", "-c", f"echo {label} >> {order}"))
        wait_for(lambda: len(cluster.jobs()) == len(procs), 10, "job queued")
    assert [j["priority"] for j in cluster.jobs()] == [5, 5, 1, 0, 0]
    cluster.worker()
    for proc in procs:
        assert proc.wait(timeout=20) == 0
    assert order.read_text().split() == ["b5", "d5", "c1", "a0", "e0"]


def test_cancel_a_queued_and_a_running_job(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    running = cluster.popen_jq("-v", "sh", "-c", "echo up; exec sleep 60")
    running_id = job_id_of(running)
    assert running.stdout is not None and running.stdout.readline() == b"up\n"
    queued = cluster.popen_jq("-v", "echo", "never")
    queued_id = job_id_of(queued)

    assert control(cluster, "cancel", "--signal", "INT", queued_id).returncode == 0
    out, err = queued.communicate(timeout=10)
    assert queued.returncode == 130 and out == b""
    assert running.poll() is None  # the other job runs on

    assert control(cluster, "cancel", running_id).returncode == 0  # SIGTERM
    assert running.wait(timeout=10) == 143
    wrong = control(cluster, "cancel", running_id)  # gone now
    assert wrong.returncode == 1 and f"no job {running_id}" in wrong.stderr
    wait_for(lambda: cluster.jobs() == [], 10, "both jobs to be forgotten")


def test_drain_finishes_the_running_job_then_exits_zero(cluster: Cluster) -> None:
    cluster.server()
    worker = cluster.worker(name="drainme")
    first = cluster.popen_jq(*gate_command(cluster.tmp, "go"))
    assert first.stdout is not None and first.stdout.readline() == b"up\n"
    assert control(cluster, "drain", "drainme").returncode == 0
    cluster.wait_worker("drainme", state="draining")
    second = cluster.popen_jq("echo", "not-here")
    jobs = wait_for(lambda: [j for j in cluster.jobs() if j["state"] == "queued"], 10, "second job queued")
    assert jobs[0]["why"] == "every worker that could run it is draining"
    (cluster.tmp / "go").touch()
    assert first.wait(timeout=10) == 0
    assert worker.wait(timeout=10) == 0
    assert second.poll() is None  # the drained worker did not take it
    unknown = control(cluster, "drain", "no-such-worker")
    assert unknown.returncode == 1 and "no worker named no-such-worker" in unknown.stderr
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=10) == 130


def scrape(port: int) -> dict[str, float]:
    """The metrics endpoint's samples as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_and_json_log_lines(cluster: Cluster) -> None:
    port = free_port()
    cluster.server("--metrics", f"127.0.0.1:{port}", "--log-format", "json")
    worker = cluster.worker(name="m")
    assert cluster.jq("true").returncode == 0
    assert cluster.jq("sh", "-c", "exit 3").returncode == 3
    assert cluster.jq("--timeout", "0.2", "sleep", "30").returncode == 124

    def settled() -> dict[str, float] | None:
        samples = scrape(port)
        idle = samples.get("jobqueue_workers_connected") == 1 and samples.get("jobqueue_jobs_running") == 0
        return samples if idle else None

    samples = wait_for(settled, 10, "gauges to refresh")
    assert samples['jobqueue_jobs_finished_total{outcome="succeeded"}'] == 1
    assert samples['jobqueue_jobs_finished_total{outcome="nonzero"}'] == 1
    assert samples['jobqueue_jobs_finished_total{outcome="timeout"}'] == 1
    assert samples["jobqueue_job_queue_wait_seconds_count"] == 3
    assert samples["jobqueue_job_run_seconds_count"] == 3
    assert samples["jobqueue_job_run_seconds_sum"] >= 0.1  # from Started
    assert samples["jobqueue_jobs_queued"] == 0 and samples["jobqueue_jobs_running"] == 0
    assert samples["jobqueue_workers_busy"] == 0 and samples["jobqueue_worker_slots"] == 1

    busy = cluster.popen_jq(*gate_command(cluster.tmp, "go"))
    assert busy.stdout is not None and busy.stdout.readline() == b"up\n"
    waiting = cluster.popen_jq("true")
    wait_for(lambda: scrape(port).get("jobqueue_jobs_queued") == 1, 10, "a queued job in the metrics")
    samples = scrape(port)
    assert samples["jobqueue_jobs_running"] == 1 and samples["jobqueue_workers_busy"] == 1
    (cluster.tmp / "go").touch()
    assert busy.wait(timeout=10) == 0 and waiting.wait(timeout=10) == 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0

    log = cluster.logs[0]
    wait_for(lambda: '"worker-left"' in log.read_text(), 10, "worker-left in the server log")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["role"] == "server" and isinstance(e["ts"], float) for e in events)
    kinds = [e["event"] for e in events]
    for kind in ("listening", "worker-joined", "client-joined", "job-queued", "job-started", "job-finished",
                 "client-left", "worker-left"):
        assert kind in kinds, kind
    started = [e for e in events if e["event"] == "job-started"]
    finished = [e for e in events if e["event"] == "job-finished"]
    assert len(started) == len(finished) == 5
    assert all(e["worker"] == "m" and e["waited"] >= 0 and e["job"] for e in started)
    timed_out = [e for e in finished if e["reason"] == "timeout"]
    assert len(timed_out) == 1 and timed_out[0]["status"] == 124 and timed_out[0]["ran"] >= 0.1
    assert max(e["waited"] for e in started) > 0.05  # the job queued behind "busy" waited


def test_bad_metrics_address_is_refused(cluster: Cluster) -> None:
    r = subprocess.run([str(BIN / "jobqueue-server"), cluster.endpoint, "--metrics", "localhost:http"],
                       capture_output=True, text=True, env=cluster.env(), timeout=30)
    assert r.returncode == 255
    assert "bad --metrics address 'localhost:http'" in r.stderr
