"""Signals to jq while its server is gone or frozen (README "Signals"): a job that has
not started is abandoned at once (128+N, one line); a running job's signal waits for
the server's return, and a second signal abandons it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import IO

import pytest

from tests.conftest import Cluster, descendants_alive, wait_for

#: How soon jq must end once signalled with its server gone: at once (the server's
#: connection is closed), give or take a loaded machine.
PROMPT = 2.0


def _line(stream: IO[bytes] | None, timeout: float = 10.0) -> bytes:
    """One line of a child's pipe, failing after ``timeout`` (never blocks past it)."""
    assert stream is not None
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no whole line in {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"EOF before a whole line (got {data!r})")
        data += chunk
    return data


def _ended_within(proc: subprocess.Popen[bytes], seconds: float) -> tuple[bytes, float]:
    """Wait for ``proc`` (at most ``seconds``): its stderr, and how long it took."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"jq still runs {seconds}s after the signal") from None
    return err, time.monotonic() - start


def _queued_job(cluster: Cluster, marker: str = "must-not-run") -> subprocess.Popen[bytes]:
    proc = cluster.popen_jq("touch", str(cluster.tmp / marker))
    wait_for(lambda: [j["state"] for j in cluster.jobs()] == ["queued"], 10, "the job to be queued")
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_jq_of_a_queued_job_after_kill_9_of_the_server_ends_jq_at_once(
        cluster: Cluster, signum: int) -> None:
    server = cluster.server()
    proc = _queued_job(cluster)
    server.kill()
    server.wait(timeout=5)
    proc.send_signal(signum)
    err, took = _ended_within(proc, 10)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert err.decode().splitlines() == [
        f"jq: the server at {cluster.endpoint} does not answer; job {_job_id(err)} abandoned on {name} "
        "before it started"]
    assert took < PROMPT, f"jq took {took:.2f}s to end"
    # The server comes back with a worker: nobody re-submits the job, so it never runs.
    cluster.server()
    cluster.worker()
    assert cluster.jq("true").returncode == 0
    assert cluster.jobs() == []
    assert not (cluster.tmp / "must-not-run").exists()


def _job_id(err: bytes) -> str:
    return err.split(b"; job ", 1)[1].split()[0].decode()


def test_signal_to_jq_of_a_queued_job_while_the_server_is_frozen_ends_jq_and_drops_the_job(
        cluster: Cluster) -> None:
    """A server that does not answer (stopped: its connection stays up) is given about a
    heartbeat (at least 0.5 s) to show it got the signal; once it runs again it cancels
    the job, which never runs."""
    server = cluster.server()
    proc = _queued_job(cluster)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGTERM)
        err, took = _ended_within(proc, 10)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert proc.returncode == 143
    assert len(err.splitlines()) == 1 and b"does not answer" in err and b"abandoned on SIGTERM" in err
    assert 0.4 < took < 0.5 + PROMPT, f"jq took {took:.2f}s to end"
    wait_for(lambda: cluster.jobs() == [], 10, "the abandoned job to be dropped")
    assert "job-cancelled" in cluster.log_text()  # it read jq's signal (not only lost jq later)
    cluster.worker()
    assert cluster.jq("true").returncode == 0
    assert not (cluster.tmp / "must-not-run").exists()


def test_queue_timeout_with_the_server_gone_ends_jq_with_255(cluster: Cluster) -> None:
    server = cluster.server()
    proc = cluster.popen_jq("--queue-timeout", "1", "true")
    wait_for(lambda: len(cluster.jobs()) == 1, 10, "the job to be queued")
    server.kill()
    server.wait(timeout=5)
    err, _ = _ended_within(proc, 10)
    assert proc.returncode == 255
    assert err.startswith(b"jq: job ") and b"did not start within 1s (--queue-timeout) and the server at" in err
    assert len(err.splitlines()) == 1


TRAPPED = ("trap 'echo got-int; exit 3' INT; echo $$ > {pid}; echo up; "
           "while :; do sleep 0.05; done")


def _running_job(cluster: Cluster) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    server = cluster.server()
    cluster.worker(name="w")
    proc = cluster.popen_jq("sh", "-c", TRAPPED.format(pid=cluster.tmp / "pid"))
    assert _line(proc.stdout) == b"up\n"
    server.kill()
    server.wait(timeout=5)
    return server, proc


def _held_line(cluster: Cluster, proc: subprocess.Popen[bytes]) -> bytes:
    line = _line(proc.stderr)
    assert line.startswith(f"jq: the server at {cluster.endpoint} does not answer; SIGINT goes to job ".encode())
    assert line.endswith(b" once it is back (signal jq again to abandon the job)\n")
    return line


def test_signal_to_jq_of_a_running_job_waits_for_the_server_and_reaches_the_job(cluster: Cluster) -> None:
    _, proc = _running_job(cluster)
    proc.send_signal(signal.SIGINT)
    _held_line(cluster, proc)
    assert proc.poll() is None  # jq waits for the server, as the job runs on
    cluster.server()  # the worker re-attaches the job, jq re-attaches to it: the signal goes through
    out, err = proc.communicate(timeout=20)
    assert (out, err, proc.returncode) == (b"got-int\n", b"", 3)


def test_second_signal_to_jq_of_a_running_job_with_the_server_gone_abandons_it(cluster: Cluster) -> None:
    _, proc = _running_job(cluster)
    proc.send_signal(signal.SIGINT)
    _held_line(cluster, proc)
    proc.send_signal(signal.SIGINT)
    err, took = _ended_within(proc, 10)
    assert proc.returncode == 130 and took < PROMPT
    assert err.decode().splitlines() == [
        f"jq: the server at {cluster.endpoint} does not answer; job {_job_id(err)} abandoned on SIGINT; "
        "it is stopped when the server is back (or its worker gives up on the server)"]
    # The server comes back: the worker re-attaches the job, nobody claims it, it is stopped.
    cluster.server()
    wait_for(lambda: not descendants_alive(cluster.tmp / "pid"), 15, "the abandoned job to be stopped")


def test_signal_to_jq_waits_until_the_restarted_server_has_re_attached_the_job(cluster: Cluster) -> None:
    """The server is back but its worker is not (stopped): the restarted server would drop a
    signal to a job it has not re-attached, so jq keeps it until the job is re-attached.
    (A liveness of 10 s keeps the server from requeueing the job meanwhile.)"""
    server = cluster.server("--liveness", "50")
    worker = cluster.worker(name="w")
    proc = cluster.popen_jq("sh", "-c", TRAPPED.format(pid=cluster.tmp / "pid"))
    assert _line(proc.stdout) == b"up\n"
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        server.kill()
        server.wait(timeout=5)
        cluster.server("--liveness", "50")
        wait_for(lambda: len(cluster.jobs()) == 1, 10, "jq to re-attach to the restarted server")
        proc.send_signal(signal.SIGINT)
        line = _line(proc.stderr)
        assert line.startswith(f"jq: the server at {cluster.endpoint} has not re-attached job ".encode())
        assert line.endswith(b" yet; SIGINT goes to it once it has (signal jq again to abandon the job)\n")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=20)
    assert (out, err, proc.returncode) == (b"got-int\n", b"", 3)
