"""End-to-end: the Python API (``jobqueue.run`` and ``jobqueue.Executor``)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import threading

import psutil
import pytest

import jobqueue
from tests.conftest import Cluster, wait_for


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
