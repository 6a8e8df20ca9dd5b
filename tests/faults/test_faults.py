"""Fault injection: crashes, polite stops, network cuts, server restarts,
poison jobs and slow readers.  Each proves one promise of README "Guarantees"."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from jobqueue.protocol import PROTOCOL_VERSION
from tests.conftest import BIN, Cluster, wait_for
from tests.support.relay import Relay


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _wait_line(proc: subprocess.Popen[bytes], expected: bytes) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == expected


def _park_first_attempt(cluster: Cluster) -> tuple[subprocess.Popen[bytes], Path]:
    """A job whose first attempt writes its pid and sleeps; a second attempt prints
    'again' and exits 0.  Returns once the first attempt runs."""
    pidfile = cluster.tmp / "pid"
    marker = cluster.tmp / "ran"
    proc = cluster.popen_jq("sh", "-c", f"if [ ! -e {marker} ]; then touch {marker}; echo $$ > {pidfile}; "
                            "echo first; exec sleep 60; fi; echo again")
    _wait_line(proc, b"first\n")
    return proc, pidfile


def test_silent_network_cut_requeues_within_liveness(tcp_cluster: Cluster) -> None:
    c = tcp_cluster
    c.server()
    relay = Relay(_port(c.endpoint))
    try:
        c.worker(name="cut", endpoint=relay.endpoint)
        marker = c.tmp / "ran"
        proc = c.popen_jq("sh", "-c", f"if [ ! -e {marker} ]; then touch {marker}; echo first; sleep 60; fi; "
                          "echo second; exit 4")
        _wait_line(proc, b"first\n")
        c.worker(name="direct")
        relay.freeze()
        cut_at = time.monotonic()
        out, err = proc.communicate(timeout=20)
        detected = time.monotonic() - cut_at
        assert proc.returncode == 4 and out == b"second\n"
        assert b"was lost" in err
        assert detected < 5, f"loss took {detected:.1f}s with a 1 s liveness bound"
    finally:
        relay.close()


def test_worker_sigterm_requeues_at_once_and_kills_job(cluster: Cluster) -> None:
    # Liveness of 100 heartbeats (20 s): only the worker's Goodbye can make it fast.
    cluster.server("--liveness", "100")
    leaving = cluster.worker(name="leaving")
    proc, pidfile = _park_first_attempt(cluster)
    job_pid = int(pidfile.read_text())
    cluster.worker(name="staying")
    start = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=10) == 0
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 5
    assert out == b"again\n" and proc.returncode == 0 and b"stopped" in err
    assert not psutil.pid_exists(job_pid) or psutil.Process(job_pid).status() == psutil.STATUS_ZOMBIE


def test_worker_sigusr1_drains_then_exits(cluster: Cluster) -> None:
    cluster.server()
    worker = cluster.worker(name="drainer")
    gate = cluster.tmp / "gate"
    proc = cluster.popen_jq("sh", "-c", f"echo running; while [ ! -e {gate} ]; do sleep 0.05; done; echo done")
    _wait_line(proc, b"running\n")
    worker.send_signal(signal.SIGUSR1)
    cluster.wait_worker("drainer", state="draining")
    queued = cluster.popen_jq("echo", "elsewhere")
    wait_for(lambda: any(j["state"] == "queued" for j in cluster.jobs()), 10, "second job queued")
    gate.touch()
    out, _ = proc.communicate(timeout=10)
    assert out == b"done\n" and proc.returncode == 0
    assert worker.wait(timeout=10) == 0
    cluster.worker(name="next")
    assert queued.communicate(timeout=10)[0] == b"elsewhere\n"


def test_queued_job_of_lost_client_is_dropped(cluster: Cluster) -> None:
    cluster.server()
    orphan = cluster.popen_jq("touch", str(cluster.tmp / "must-not-run"))
    wait_for(lambda: len(cluster.jobs()) == 1, 10, "job queued")
    os.kill(orphan.pid, signal.SIGKILL)
    wait_for(lambda: cluster.jobs() == [], 10, "lost client's job dropped")
    cluster.worker()
    assert cluster.jq("true").returncode == 0
    assert not (cluster.tmp / "must-not-run").exists()


def _restart_server(cluster: Cluster, server: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    server.kill()
    server.wait(timeout=5)
    return cluster.server()


def test_server_restart_loses_nothing_while_streaming(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.worker(name="w")
    data = os.urandom(8 << 20)
    source = cluster.tmp / "in"
    source.write_bytes(data)
    # The job echoes stdin to stdout and a checksum line to stderr, slowly enough
    # that the server dies mid-stream.
    script = ("python3 -c \"import sys,time,hashlib\nh=hashlib.sha256()\n"
              "while True:\n d=sys.stdin.buffer.read(65536)\n if not d: break\n h.update(d)\n"
              " sys.stdout.buffer.write(d); sys.stdout.flush(); time.sleep(0.002)\n"
              "sys.stderr.write(h.hexdigest()+chr(10)); sys.exit(5)\"")
    with open(source, "rb") as stdin:
        proc = cluster.popen_jq("sh", "-c", script, stdin=stdin)
        assert proc.stdout is not None
        head = proc.stdout.read(1 << 20)
        server = _restart_server(cluster, server)
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 5
    assert head + rest == data
    assert err == hashlib.sha256(data).hexdigest().encode() + b"\n"


def test_server_restart_keeps_queue_order(cluster: Cluster) -> None:
    server = cluster.server()
    order = cluster.tmp / "order"
    procs = []
    for i in range(4):
        procs.append(cluster.popen_jq("sh", "-c", f"echo {i} >> {order}"))
        wait_for(lambda n=i + 1: len(cluster.jobs()) == n, 10, "job queued")
    _restart_server(cluster, server)
    wait_for(lambda: len(cluster.jobs()) == 4, 10, "clients to re-submit")
    cluster.worker()
    for proc in procs:
        assert proc.wait(timeout=20) == 0
    assert order.read_text().split() == ["0", "1", "2", "3"]


def test_server_gone_past_grace_is_a_clear_error(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.worker()
    env = cluster.env(JOBQUEUE_SERVER_GRACE="1.5")
    proc = cluster.popen_jq("sh", "-c", "echo up; sleep 60", env=env)
    _wait_line(proc, b"up\n")
    server.kill()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 255
    assert err.startswith(b"jq: lost the server") and b"giving up" in err


def test_poison_job_is_given_up_after_max_attempts(cluster: Cluster) -> None:
    cluster.server()
    for name in ("p1", "p2", "p3"):
        cluster.worker(name=name)
    # The job kills the worker that runs it.
    r = cluster.jq("--max-attempts", "2", "sh", "-c", "kill -9 $PPID; sleep 30", timeout=30)
    assert r.returncode == 255
    assert b"lost 2 times" in r.stderr
    names = {w["name"] for w in (cluster.status() or {"workers": []})["workers"]}
    assert len(names) == 1, names  # exactly two workers were sacrificed


def test_slow_reader_stalls_job_and_memory_stays_bounded(cluster: Cluster) -> None:
    server = cluster.server()
    worker = cluster.worker()
    size = 1 << 30
    proc = cluster.popen_jq("head", "-c", str(size), "/dev/zero")
    assert proc.stdout is not None
    first = proc.stdout.read(1 << 20)  # then stop reading for a while
    jq = psutil.Process(proc.pid)
    peaks = {"server": 0, "worker": 0, "jq": 0}

    def sample() -> None:
        for name, pid in (("server", server.pid), ("worker", worker.pid), ("jq", jq.pid)):
            peaks[name] = max(peaks[name], psutil.Process(pid).memory_info().rss)

    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        sample()
        time.sleep(0.05)
    total = len(first)
    while chunk := proc.stdout.read(8 << 20):
        total += len(chunk)
        sample()
    assert proc.wait(timeout=60) == 0 and total == size
    for name, rss in peaks.items():
        assert rss < 120 << 20, f"{name} peaked at {rss >> 20} MiB"


def test_many_clients_at_once(cluster: Cluster) -> None:
    cluster.server()
    workers = [cluster.worker(name=f"w{i}", wait=False) for i in range(8)]
    wait_for(lambda: len((cluster.status() or {"workers": []})["workers"]) == 8, 20, "8 workers")
    ledger = cluster.tmp / "ledger"
    clients = 200
    procs = []
    for i in range(clients):
        script = f"echo {i} >> {ledger}; head -c {i * 97} /dev/zero | tr '\\0' x; echo; echo e{i} >&2; exit {i % 256}"
        procs.append(cluster.popen_jq("sh", "-c", script))
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == i % 256
        assert out == b"x" * (i * 97) + b"\n" and err == f"e{i}\n".encode()
    runs = ledger.read_text().split()
    assert sorted(map(int, runs)) == list(range(clients)), "a job ran twice or never"
    assert all(w.poll() is None for w in workers)


def test_garbage_on_the_server_socket_is_refused_and_server_survives(cluster: Cluster) -> None:
    import zmq

    cluster.server()
    cluster.worker()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint)
    rng = __import__("random").Random(7)
    for _ in range(2000):
        frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 4))]
        sock.send_multipart(frames)
    sock.send_multipart([b"\x92\xa5hello\x63"])  # a hello of protocol version 99
    replies = []
    while sock.poll(2000):
        replies.append(sock.recv_multipart())
        if any(b"version" in f for r in replies for f in r):
            break
    expected = f"server speaks version {PROTOCOL_VERSION}, peer speaks version 99".encode()
    assert any(expected in f for r in replies for f in r)
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(cluster.endpoint)
    big.send(b"\0" * (4 << 20))  # over the message cap: the server drops that connection
    assert cluster.jq("echo", "still-alive").stdout == b"still-alive\n"
    sock.close()
    big.close()


def test_stdin_is_replayed_in_full_after_requeue(cluster: Cluster) -> None:
    cluster.server()
    first = cluster.worker(name="first")
    data = os.urandom(6 << 20)  # larger than the in-memory spool: exercises the temp file
    marker = cluster.tmp / "once"
    script = (f"if [ ! -e {marker} ]; then touch {marker}; head -c 1000000 >/dev/null; echo half; sleep 60; fi; "
              "sha256sum")
    proc = cluster.popen_jq("sh", "-c", script, stdin=subprocess.PIPE)
    assert proc.stdin is not None

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    _wait_line(proc, b"half\n")
    cluster.worker(name="second")
    first.kill()
    out, _ = proc.communicate(timeout=30)
    writer.join(timeout=5)
    assert proc.returncode == 0
    assert out.split()[0] == hashlib.sha256(data).hexdigest().encode()


def test_bin_is_real_interpreter() -> None:
    first_line = (BIN / "jq").read_text().splitlines()[0]
    assert first_line.startswith("#!/") and "python" in first_line and "pyenv/shims" not in first_line


def test_batch_system_stop_signals_job_first_and_still_requeues(cluster: Cluster) -> None:
    """Like Slurm's scancel: SIGTERM reaches the job's processes an instant
    before the worker; the job must be requeued, not ended with 143."""
    cluster.server()
    leaving = cluster.worker(name="allocation")
    proc, pidfile = _park_first_attempt(cluster)
    cluster.worker(name="next")
    os.killpg(int(pidfile.read_text()), signal.SIGTERM)
    leaving.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert (out, proc.returncode) == (b"again\n", 0), err
    assert leaving.wait(timeout=10) == 0
