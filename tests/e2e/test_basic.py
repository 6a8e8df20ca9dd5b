"""End-to-end: the core promises of jq, against a real server and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.conftest import BIN, Cluster, wait_for


def test_exit_codes_and_separate_streams(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    for code in (0, 1, 42):
        r = cluster.jq("sh", "-c", f"echo out; echo err >&2; exit {code}")
        assert (r.returncode, r.stdout, r.stderr) == (code, b"out\n", b"err\n")


def test_not_found_127_not_executable_126(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    r = cluster.jq("no-such-command-xyz")
    assert r.returncode == 127
    assert b"no-such-command-xyz: command not found" in r.stderr
    script = cluster.tmp / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    r = cluster.jq(str(script))
    assert r.returncode == 126


def test_killed_by_signal_is_128_plus_n(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    assert cluster.jq("sh", "-c", "kill -KILL $$").returncode == 137
    assert cluster.jq("sh", "-c", "kill -TERM $$").returncode == 143


def test_stdin_eof_reaches_job(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    data = b"x" * 123457
    r = cluster.jq("wc", "-c", input=data)
    assert r.returncode == 0
    assert r.stdout.strip() == b"123457"


def test_job_stdin_is_dev_null_exactly_when_ours_is(cluster: Cluster) -> None:
    """A stdin of /dev/null is not forwarded: the job gets /dev/null itself; a closed one
    is closed for the job too, as it would be locally."""
    cluster.server()
    cluster.worker()
    show = ("sh", "-c", "readlink /proc/self/fd/0; cat")
    r = cluster.jq(*show)  # the harness gives jq /dev/null
    assert (r.returncode, r.stdout) == (0, b"/dev/null\n")
    r = cluster.jq(*show, input=b"piped")
    assert r.returncode == 0 and r.stdout.startswith(b"pipe:") and r.stdout.endswith(b"\npiped")
    closed = subprocess.run([str(BIN / "jq"), *show], stdin=subprocess.DEVNULL, capture_output=True,
                            env=cluster.env(), cwd=str(cluster.tmp), timeout=30, preexec_fn=lambda: os.close(0))
    local = subprocess.run(show, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                           preexec_fn=lambda: os.close(0))
    assert (closed.returncode, closed.stdout) == (local.returncode, local.stdout) == (1, b"")


def test_all_byte_values_both_ways(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    data = bytes(range(256)) * 1000
    r = cluster.jq("sh", "-c", "cat; cat /dev/null >&2", input=data)
    assert r.returncode == 0 and r.stdout == data
    r = cluster.jq("sh", "-c", "cat >&2", input=data)
    assert r.returncode == 0 and r.stderr == data and r.stdout == b""


def test_argv_passed_verbatim(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    r = cluster.jq("printf", "[%s]", "-la", "a b", "", "*", "$HOME")
    assert r.stdout == b"[-la][a b][][*][$HOME]"


def test_cwd_and_env_follow_jq(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    sub = cluster.tmp / "sub"
    sub.mkdir()
    env = cluster.env(JQ_TEST_VAR="from-jq")
    r = cluster.jq("sh", "-c", 'pwd; echo "$JQ_TEST_VAR $EXTRA"', "-e", env=env, cwd=str(sub))
    assert r.stdout.decode().splitlines()[0] == str(sub)
    r = cluster.jq("-e", "EXTRA=yes", "-C", str(cluster.tmp), "sh", "-c", 'pwd; echo "$JQ_TEST_VAR $EXTRA"',
                   env=env, cwd=str(sub))
    assert r.stdout.decode().splitlines() == [str(cluster.tmp), "from-jq yes"]


def test_missing_directory_is_255_naming_worker(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker(name="wdir")
    r = cluster.jq("-C", "/nonexistent/dir", "true")
    assert r.returncode == 255
    assert b"/nonexistent/dir" in r.stderr and b"wdir" in r.stderr


def test_unenterable_directory_is_255_saying_why(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker(name="wdir")
    r = cluster.jq("-C", "/etc/hostname", "true")  # exists, but is no directory
    assert r.returncode == 255
    assert b"cannot enter directory /etc/hostname on worker wdir" in r.stderr and b"Not a directory" in r.stderr


def test_job_starts_clean_of_the_workers_state(cluster: Cluster) -> None:
    """The job's own PATH finds its program, relative to its own directory; it
    gets no fd of the worker's and no signal the worker's launcher ignored."""
    cluster.server()
    launcher = 'trap "" HUP INT QUIT PIPE; exec 7</dev/null; exec "$@"'
    cluster.spawn(["sh", "-c", launcher, "sh", str(BIN / "jobqueue-worker"), cluster.endpoint, "--name", "wclean"],
                  log="worker-wclean")
    cluster.wait_worker("wclean")
    tools = cluster.tmp / "tools"
    tools.mkdir()
    (tools / "only-here").write_text('#!/bin/sh\necho "found in $PWD"\n')
    (tools / "only-here").chmod(0o755)
    env = {**cluster.env(), "PATH": f"tools:{os.environ['PATH']}"}  # a relative entry: from the job's directory
    r = cluster.jq("only-here", env=env)
    assert (r.returncode, r.stdout) == (0, f"found in {cluster.tmp}\n".encode())
    (tools / "only-here").rename(tools / "moved")  # the worker remembers where it was: not for ever
    assert cluster.jq("only-here", env=env).returncode == 127
    (tools / "moved").rename(tools / "only-here")
    assert cluster.jq("only-here", env=env).returncode == 0
    r = cluster.jq("./tools/only-here")
    assert (r.returncode, r.stdout) == (0, f"found in {cluster.tmp}\n".encode())
    r = cluster.jq("sh", "-c", "ls /proc/$$/fd; grep SigIgn /proc/$$/status")
    assert r.stdout.decode().splitlines()[:-1] == ["0", "1", "2"], r.stdout
    ignored = r.stdout.decode().splitlines()[-1]
    mask = int(ignored.split()[1], 16)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
        assert not mask & (1 << (signum - 1)), f"the job ignores {signum!r}: {ignored}"


def test_output_is_streamed_not_buffered(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    proc = cluster.popen_jq("sh", "-c", "echo first; sleep 30")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"first\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143


def test_sigint_is_forwarded_to_a_job_that_traps_it(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    proc = cluster.popen_jq("sh", "-c", "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert out == b"got-int\n"
    assert proc.returncode == 7


def test_cancel_while_queued(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    busy = cluster.popen_jq("sh", "-c", "echo busy; sleep 30")
    assert busy.stdout is not None and busy.stdout.readline() == b"busy\n"
    waiting = cluster.popen_jq("echo", "never")
    wait_for(lambda: any(j["state"] == "queued" for j in cluster.jobs()), 10, "job to be queued")
    waiting.send_signal(signal.SIGINT)
    out, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 130 and out == b""
    busy.send_signal(signal.SIGTERM)
    assert busy.wait(timeout=10) == 143


def test_server_unreachable_is_255(cluster: Cluster) -> None:
    r = cluster.jq("--connect-timeout", "0.5", "true")
    assert r.returncode == 255
    assert r.stderr.startswith(b"jq: ") and b"cannot reach the server" in r.stderr


def test_usage_errors_are_255(cluster: Cluster) -> None:
    for args in (["--bogus", "true"], [], ["--timeout", "soon", "true"]):
        r = cluster.jq(*args)
        assert r.returncode == 255, args
        assert r.stderr.startswith(b"jq: ")


def test_semaphore_two_workers_six_sleeps(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker(name="a")
    cluster.worker(name="b")
    start = time.monotonic()
    procs = [cluster.popen_jq("sleep", "1") for _ in range(6)]
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    elapsed = time.monotonic() - start
    assert 2.9 <= elapsed < 6, elapsed


def test_requeue_after_worker_sigkill(cluster: Cluster) -> None:
    cluster.server()
    first = cluster.worker(name="first")
    marker = cluster.tmp / "ran-once"
    data = os.urandom(300_000)
    script = f"if [ ! -e {marker} ]; then touch {marker}; echo started; sleep 60; fi; cat | wc -c"
    proc = cluster.popen_jq("sh", "-c", script, stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.close()
    assert proc.stdout.readline() == b"started\n"
    cluster.worker(name="second")
    os.kill(first.pid, signal.SIGKILL)
    out = proc.stdout.read()
    assert proc.wait(timeout=20) == 0
    assert out.strip() == str(len(data)).encode()
    assert proc.stderr is not None and b"running it again" in proc.stderr.read()


def test_client_sigkill_leaves_no_orphan(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker(name="w")
    pidfile = cluster.tmp / "pid"
    proc = cluster.popen_jq("sh", "-c", f"echo $$ > {pidfile}; echo up; exec sleep 60")
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    os.kill(proc.pid, signal.SIGKILL)
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 10, "the job to be killed")
    cluster.wait_worker("w", state="idle")


def test_fifo_order(cluster: Cluster) -> None:
    cluster.server()
    order = cluster.tmp / "order"
    procs = []
    for i in range(5):
        procs.append(cluster.popen_jq("sh", "-c", f"echo {i} >> {order}"))
        wait_for(lambda n=i + 1: len(cluster.jobs()) == n, 10, "job queued")
    cluster.worker()
    for proc in procs:
        assert proc.wait(timeout=20) == 0
    assert order.read_text().split() == ["0", "1", "2", "3", "4"]


def test_fifty_mib_stream_through_cat(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    data = os.urandom(50 << 20)
    r = cluster.jq("cat", input=data, timeout=60)
    assert r.returncode == 0
    assert len(r.stdout) == len(data) and r.stdout == data


def test_every_forwarded_signal_reaches_the_job(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    names = ["INT", "TERM", "HUP", "QUIT", "USR1", "USR2"]
    traps = " ".join(f"trap 'echo got-{n}; exit {40 + i}' {n};" for i, n in enumerate(names))
    for i, name in enumerate(names):
        proc = cluster.popen_jq("sh", "-c", f"{traps} echo ready; while :; do sleep 0.05; done")
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(getattr(signal, f"SIG{name}"))
        out, _ = proc.communicate(timeout=10)
        assert (out, proc.returncode) == (f"got-{name}\n".encode(), 40 + i)


def test_worker_started_before_its_server(tcp_cluster: Cluster) -> None:
    tcp_cluster.worker(name="early", wait=False)
    tcp_cluster.server()
    tcp_cluster.wait_worker("early")
    assert tcp_cluster.jq("echo", "late server").stdout == b"late server\n"
