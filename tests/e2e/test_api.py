"""End-to-end: the Python API (``jobqueue.run`` and ``jobqueue.Executor``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import jobqueue
from tests.conftest import Cluster, wait_for
from tests.support.relay import Relay


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie waiting for a reaper does not)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_run_mirrors_subprocess_run(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    server = cluster.endpoint
    args = ["sh", "-c", "cat; echo err >&2; exit 3"]
    r = jobqueue.run(args, input=b"data\0\xff", capture_output=True, server=server)
    assert isinstance(r, subprocess.CompletedProcess)
    assert (r.args, r.returncode, r.stdout, r.stderr) == (args, 3, b"data\0\xff", b"err\n")

    big = os.urandom(3 * 1024 * 1024)  # more than the stdin window
    r = jobqueue.run(["wc", "-c"], input=big, capture_output=True, server=server)
    assert r.stdout.strip() == str(len(big)).encode()

    sub = cluster.tmp / "sub"
    sub.mkdir()
    r = jobqueue.run(["sh", "-c", 'pwd; echo "$ONLY"; echo "${HOME:-no home}"'], capture_output=True,
                     env={"ONLY": "this", "PATH": os.environ["PATH"]}, cwd=sub, server=server)
    assert r.stdout.decode().splitlines() == [str(sub), "this", "no home"]
    os.environ["JOBQUEUE_API_TEST"] = "inherited"
    try:
        r = jobqueue.run(["sh", "-c", "echo $JOBQUEUE_API_TEST"], capture_output=True, server=server)
    finally:
        del os.environ["JOBQUEUE_API_TEST"]
    assert r.stdout == b"inherited\n"

    with pytest.raises(subprocess.CalledProcessError) as failed:
        jobqueue.run(["sh", "-c", "echo partial; exit 5"], check=True, capture_output=True, server=server)
    assert (failed.value.returncode, failed.value.stdout) == (5, b"partial\n")
    assert jobqueue.run(["sh", "-c", "kill -TERM $$"], server=server).returncode == -15
    with pytest.raises(FileNotFoundError, match="no-such-program-xyz: command not found"):
        jobqueue.run(["no-such-program-xyz"], server=server)
    with pytest.raises(jobqueue.JobqueueError, match="directory /nonexistent/dir does not exist"):
        jobqueue.run("true", cwd="/nonexistent/dir", server=server)


def test_run_timeout_kills_the_job_and_raises_timeout_expired(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    pidfile = cluster.tmp / "pid"
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        jobqueue.run(["sh", "-c", f"echo $$ > {pidfile}; echo partial; exec sleep 60"], timeout=0.5,
                     capture_output=True, server=cluster.endpoint)
    assert expired.value.timeout == 0.5 and expired.value.output == b"partial\n"
    pid = int(pidfile.read_text())
    wait_for(lambda: gone(pid), 5, "the timed-out job to be gone")


def test_run_without_capture_writes_to_our_stdout_and_stderr(cluster: Cluster,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    cluster.server()
    cluster.worker()
    threads = threading.active_count()
    r = jobqueue.run(["sh", "-c", "echo to-out; echo to-err >&2"], server=cluster.endpoint)
    assert (r.returncode, r.stdout, r.stderr) == (0, None, None)
    out, err = capfd.readouterr()
    assert out == "to-out\n" and err == "to-err\n"
    wait_for(lambda: threading.active_count() <= threads, 5, "run()'s threads to end")


def test_executor_runs_300_jobs_over_one_connection(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker("-j", "4")
    with jobqueue.Executor(server=cluster.endpoint) as executor:
        futures = [executor.submit(["sh", "-c", f"echo {i}; exit $(({i} % 3))"], capture_output=True)
                   for i in range(300)]
        results = [future.result(timeout=60) for future in futures]
        mapped = list(executor.map([["echo", "a"], ["echo", "b"]], capture_output=True))
        stdin_of = ["sh", "-c", "readlink /proc/self/fd/0; cat"]
        no_input = executor.submit(stdin_of, capture_output=True).result(timeout=30)
        with_input = executor.submit(stdin_of, input=b"in", capture_output=True).result(timeout=30)
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(300)]
    assert [r.returncode for r in results] == [i % 3 for i in range(300)]
    assert [r.stdout for r in mapped] == [b"a\n", b"b\n"]
    assert no_input.stdout == b"/dev/null\n"  # no input: the job's stdin is /dev/null, as over ssh -n
    assert with_input.stdout.startswith(b"pipe:") and with_input.stdout.endswith(b"\nin")
    log = cluster.logs[0].read_text().splitlines()
    ours = [line for line in log if "client-joined" in line and f"pid={os.getpid()}" in line]
    assert len(ours) == 1, ours
    assert sum("job-finished" in line for line in log) == 304


def test_executor_cancel_and_shutdown(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    go = cluster.tmp / "go"
    executor = jobqueue.Executor(server=cluster.endpoint)
    first = executor.submit(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; echo done"],
                            capture_output=True)
    wait_for(first.running, 10, "the first job to start")
    queued = [executor.submit(["echo", str(i)], capture_output=True) for i in range(3)]
    wait_for(lambda: len(cluster.jobs()) == 4, 10, "three queued jobs")
    assert not first.cancel()  # running: like ThreadPoolExecutor, too late to cancel
    assert queued[0].cancel()
    wait_for(lambda: len(cluster.jobs()) == 3, 10, "the server to drop the cancelled job")
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(jobqueue.JobqueueError, match="after shutdown"):
        executor.submit(["true"])
    wait_for(lambda: [j["state"] for j in cluster.jobs()] == ["running"], 10, "the queued jobs to be dropped")
    go.touch()
    assert first.result(timeout=10).stdout == b"done\n"
    executor.shutdown(wait=True)
    done, not_done = concurrent.futures.wait([first, *queued], timeout=5)
    assert not not_done


def test_unreachable_server_raises_jobqueue_error(cluster: Cluster) -> None:
    with pytest.raises(jobqueue.JobqueueError, match="cannot reach the server"):
        jobqueue.run(["true"], server=cluster.endpoint, connect_timeout=0.5)


# --- cancelling while the server is gone (README "Python API") -------------------------------

#: How soon a cancelled future's waiters must hear of it: at once, give or take a loaded machine.
PROMPT = 2.0


def test_cancel_of_a_queued_job_while_the_server_is_gone_is_prompt_and_the_job_never_runs(
        cluster: Cluster) -> None:
    """The cancel cannot reach a killed server; the future is cancelled at once anyway, and
    the executor does not submit the job again to the restarted server (only the other)."""
    server = cluster.server()
    marker = cluster.tmp / "must-not-run"
    executor = jobqueue.Executor(server=cluster.endpoint)
    try:
        doomed = executor.submit(["touch", str(marker)])
        kept = executor.submit(["echo", "kept"], capture_output=True)
        wait_for(lambda: [j["state"] for j in cluster.jobs()] == ["queued", "queued"], 10, "two queued jobs")
        server.kill()
        server.wait(timeout=5)
        start = time.monotonic()
        assert doomed.cancel()
        done, _ = concurrent.futures.wait([doomed], timeout=PROMPT + 5)  # its waiters are told
        took = time.monotonic() - start
        assert done == {doomed} and doomed.cancelled() and took < PROMPT, f"{took:.2f}s"
        cluster.server()
        wait_for(lambda: [j["argv"] for j in cluster.jobs()] == [["echo", "kept"]], 10,
                 "the executor to submit again only the job not cancelled")
        cluster.worker()
        assert kept.result(timeout=20).stdout == b"kept\n"
        executor.shutdown(wait=True)
    finally:
        executor._abandon()  # after a failure: stop its thread now
    assert not marker.exists()
    assert cluster.jobs() == []


TRAPPED = ("trap 'echo got-term > {marker}; exit 3' TERM; echo $$ >> {pids}; echo up; "
           "while :; do sleep 0.05; done")


@dataclass
class Crossed:
    """A job cancelled while queued that the server started anyway: it never got the cancel
    (a relay held what the executor sent), and the executor, seeing the job start, signals it."""

    cluster: Cluster
    server: subprocess.Popen[bytes]
    relay: Relay
    executor: jobqueue.Executor
    future: concurrent.futures.Future[subprocess.CompletedProcess[bytes]]
    worker: subprocess.Popen[bytes]
    marker: Path
    pids: Path

    def restart_server(self, *args: str) -> None:
        """kill -9 the server (the SIGTERM the executor sent is lost with it) and start it again;
        the executor reconnects once the new one is there (the relay frozen meanwhile)."""
        self.relay.freeze()
        self.server.kill()
        self.server.wait(timeout=5)
        self.server = self.cluster.server(*args)
        self.relay.cut()  # what the executor sent the old server is lost
        self.relay.thaw()


@contextlib.contextmanager
def _cancel_crossing_the_start(c: Cluster, capfd: pytest.CaptureFixture[str]) -> Iterator[Crossed]:
    """(A liveness of 10 s keeps the server from taking the held-up executor for lost.)"""
    server = c.server("--liveness", "50")
    relay = Relay(int(c.endpoint.rsplit(":", 1)[1]))
    executor = jobqueue.Executor(server=relay.endpoint)
    marker, pids = c.tmp / "got-term", c.tmp / "pids"
    try:
        future = executor.submit(["sh", "-c", TRAPPED.format(marker=marker, pids=pids)])
        wait_for(lambda: [j["state"] for j in c.jobs()] == ["queued"], 10, "the job to be queued")
        relay.hold_upstream()
        assert future.cancel()
        crossed = Crossed(c, server, relay, executor, future, c.worker(name="w"), marker, pids)
        seen = ""

        def output_seen() -> bool:  # output reaches us only once the executor saw the job start
            nonlocal seen
            seen += capfd.readouterr().out
            return seen == "up\n"

        wait_for(output_seen, 10, "the executor to see the job start")
        assert [j["state"] for j in c.jobs()] == ["running"] and not marker.exists()
        yield crossed
        assert future.cancelled() and len(pids.read_text().split()) == 1  # it ran once
        executor.shutdown(wait=True)
    finally:
        executor._abandon()  # after a failure: stop its thread now
        relay.close()


def test_cancel_of_a_job_seen_starting_reaches_it_once_the_restarted_server_re_attaches_it(
        tcp_cluster: Cluster, capfd: pytest.CaptureFixture[str]) -> None:
    """The SIGTERM lost with the server waits until the restarted server has the job again
    from its worker, then reaches the job's process.  (A liveness of 10 s keeps the restarted
    server from stopping the job as nobody's before the executor is back.)"""
    with _cancel_crossing_the_start(tcp_cluster, capfd) as crossed:
        crossed.restart_server("--liveness", "50")
        wait_for(crossed.marker.exists, 8, "the job to get its SIGTERM once re-attached")
        pid = int(crossed.pids.read_text())
        wait_for(lambda: gone(pid), 10, "the job to end")
        log = tcp_cluster.logs[-1].read_text()
        assert "job-signal" in log and "its client is gone" not in log, log


def test_cancel_of_a_job_seen_starting_drops_it_when_the_restarted_server_requeues_it(
        tcp_cluster: Cluster, capfd: pytest.CaptureFixture[str]) -> None:
    """The job's worker is stopped across the restart: the restarted server has the job from
    the executor only, and requeues it when the worker does not come back (1 s); the
    executor's cancel then drops it, so it never runs again.  Once back, the worker is told to
    stop the run the server no longer has."""
    with _cancel_crossing_the_start(tcp_cluster, capfd) as crossed:
        os.kill(crossed.worker.pid, signal.SIGSTOP)
        try:
            crossed.restart_server()
            log = tcp_cluster.logs[-1]
            wait_for(lambda: "job-cancelled" in log.read_text(), 10, "the requeued job to be cancelled")
            assert "job-requeued" in log.read_text() and tcp_cluster.jobs() == []
        finally:
            os.kill(crossed.worker.pid, signal.SIGCONT)
        wait_for(crossed.marker.exists, 10, "the worker's stale run to be stopped")
