"""End-to-end: one server shared by three client keys (alice, bob, admin) and two worker keys.

Ownership and visibility, refused cancel and drain, per-key limits (tags,
max-running, max-queued, max-priority, a worker's tags), fair share (by start
order), and key changes on SIGHUP (revocation; a malformed file keeps the old keys).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobqueue import Executor
from jobqueue.security import keygen
from tests.conftest import BIN, Cluster, descendants_alive, free_port, wait_for

CLIENTS = ("alice", "bob", "admin")
WORKERS = ("w1", "w2")


@dataclass
class Team(Cluster):
    """A CURVE cluster; jq, status and workers pick their key by name (status defaults to admin's)."""

    keys: Path = Path()
    options: dict[str, str] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return str(self.keys / name)

    def public(self, name: str) -> str:
        return (self.keys / f"{name}.pub").read_text().split()[0]

    def env(self, **extra: str) -> dict[str, str]:
        keys = {"JOBQUEUE_KEY": self.key("admin"), "JOBQUEUE_SERVER_KEY": self.key("server.pub")}
        return super().env(**{**keys, **extra})

    def env_of(self, name: str) -> dict[str, str]:
        return self.env(JOBQUEUE_KEY=self.key(name))

    def write_keys(self, clients: tuple[str, ...] = ("alice", "bob"), **options: str) -> None:
        """--clients (with each name's options), --workers and --admins files."""
        def line(name: str) -> str:
            return f"{options.get(name, '')} {self.public(name)} {name}".strip() + "\n"

        (self.keys / "clients").write_text("".join(line(n) for n in clients))
        (self.keys / "workers").write_text("".join(line(n) for n in WORKERS))
        (self.keys / "admins").write_text(line("admin"))

    def start(self, *extra: str, **options: str) -> subprocess.Popen[bytes]:
        self.write_keys(**options)
        return self.server("--key", self.key("server"), "--clients", self.key("clients"), "--workers",
                           self.key("workers"), "--admins", self.key("admins"), "--log-format", "json", *extra)

    def worker_as(self, name: str, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        return self.worker("--key", self.key(name), "--server-key", self.key("server.pub"), *args, name=name,
                           wait=wait)

    def jq_as(self, name: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return self.jq(*args, env=self.env_of(name), **kwargs)

    def popen_as(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.popen_jq(*args, env=self.env_of(name))

    def control(self, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / "jobqueue"), *args, "-s", self.endpoint], capture_output=True,
                              env=self.env_of(name), timeout=20)

    def jobs_seen_by(self, name: str) -> dict[str, dict[str, Any]]:
        result = self.control(name, "status", "--json", "--jobs")
        assert result.returncode == 0, result.stderr
        return {j["job_id"]: j for j in json.loads(result.stdout)["jobs"]}

    def server_log(self) -> list[dict[str, Any]]:
        lines = self.logs[0].read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def team(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Team]:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("server", *CLIENTS, *WORKERS):
        keygen(str(keys / name))  # what jobqueue keygen does (tested in test_security.py), without 7 processes
    t = Team(tmp_path, f"tcp://127.0.0.1:{free_port()}", keys=keys)
    yield t
    t.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(t.log_text()[-20000:])


def _job_of(team: Team, viewer: str, argv_word: str) -> str:
    """The id of the (only) job whose command line holds ``argv_word``, as ``viewer`` sees it."""
    def find() -> str | None:
        return next((j for j, info in team.jobs_seen_by(viewer).items() if argv_word in info["argv"]), None)

    return str(wait_for(find, 15, f"a job with {argv_word}"))


def _running(team: Team, job_id: str) -> bool:
    return team.jobs_seen_by("admin").get(job_id, {}).get("state") == "running"


# --- ownership ------------------------------------------------------------------------------------


def test_each_sees_only_its_own_command_lines_bob_cannot_cancel_alice_admin_can(team: Team) -> None:
    team.start()
    team.worker_as("w1", "-j", "2")
    alice = team.popen_as("alice", "sh", "-c", "sleep 60", "alice-secret")
    bob = team.popen_as("bob", "sh", "-c", "sleep 60", "bob-secret")
    alice_job = _job_of(team, "alice", "alice-secret")
    bob_job = _job_of(team, "bob", "bob-secret")
    wait_for(lambda: _running(team, alice_job) and _running(team, bob_job), 15, "both jobs to run")

    seen = team.jobs_seen_by("alice")
    assert seen[alice_job]["argv"] == ["sh", "-c", "sleep 60", "alice-secret"]
    assert seen[alice_job]["cwd"] == str(team.tmp) and seen[alice_job]["owner"] == "alice"
    assert {k: seen[bob_job][k] for k in ("argv", "cwd", "tags", "owner", "state", "worker")} == {
        "argv": [], "cwd": "", "tags": [], "owner": "bob", "state": "running", "worker": "w1"}
    plain = team.control("bob", "status", "--jobs").stdout.decode()
    assert "bob-secret" in plain and "alice-secret" not in plain and "(not yours)" in plain
    assert all(j["argv"] for j in team.jobs_seen_by("admin").values())

    refused = team.control("bob", "cancel", alice_job)
    assert refused.returncode == 1
    assert refused.stderr.decode() == (f"jobqueue cancel: job {alice_job} belongs to alice: "
                                       "only an admin may cancel it\n")
    assert alice.poll() is None and _running(team, alice_job)  # her job goes on
    drain = team.control("bob", "drain", "w1")
    assert drain.returncode == 1 and "only an admin may drain workers" in drain.stderr.decode()

    assert team.control("admin", "cancel", alice_job).returncode == 0
    assert alice.wait(timeout=15) == 143
    assert team.control("bob", "cancel", bob_job).returncode == 0  # his own
    assert bob.wait(timeout=15) == 143
    assert team.control("admin", "drain", "w1").returncode == 0

    log = team.server_log()
    queued = {e["job"]: e["owner"] for e in log if e["event"] == "job-queued"}
    assert queued == {alice_job: "alice", bob_job: "bob"}
    assert any(e["event"] == "rejected" and e.get("owner") == "bob" and alice_job in e["why"] for e in log)
    assert any(e["event"] == "job-signal" and e.get("by") == "admin" for e in log)
    assert any(e["event"] == "drain-requested" and e["by"] == "admin" for e in log)
    assert "secret" not in team.logs[0].read_text()  # never a command line in the log


# --- limits ------------------------------------------------------------------------------------------


def test_forbidden_tag_priority_and_queue_quota_are_refused_and_nothing_is_queued(team: Team) -> None:
    team.start(alice='tags="linux",max-queued=2,max-priority=5')
    forbidden = team.jq_as("alice", "--tag", "gpu", "true")
    assert forbidden.returncode == 255
    assert b"tag gpu is not allowed for alice's key (its tags= option allows: linux)" in forbidden.stderr
    urgent = team.jq_as("alice", "--priority", "9", "true")
    assert urgent.returncode == 255 and b"priority 9 is above alice's max-priority=5" in urgent.stderr
    assert team.jobs_seen_by("admin") == {}

    waiting = [team.popen_as("alice", "--tag", "linux", "true") for _ in range(2)]  # no worker: they wait
    wait_for(lambda: len(team.jobs_seen_by("alice")) == 2, 15, "two queued jobs")
    third = team.jq_as("alice", "true")
    assert third.returncode == 255
    assert third.stderr.decode() == ("jq: the server rejected the job: queue quota of 2 jobs reached "
                                     "(alice's max-queued)\n")
    assert len(team.jobs_seen_by("admin")) == 2
    assert team.jq_as("bob", "--priority", "9", "--tag", "gpu", "--queue-timeout", "0.5", "true").returncode == 255
    team.worker_as("w1", "--tag", "linux")
    assert [proc.wait(timeout=15) for proc in waiting] == [0, 0]


def test_max_running_keeps_two_running_and_status_says_why(team: Team) -> None:
    team.start(alice="max-running=2")
    team.worker_as("w1", "-j", "3")
    team.worker_as("w2", "-j", "3")
    for _ in range(5):
        team.popen_as("alice", "sleep", "60")

    def states() -> list[str]:
        # alice's own: everyone sees every job, and bob's, ended, is listed until the server has
        # read its Release, which may come after a later connection's status request
        return sorted(j["state"] for j in team.jobs_seen_by("alice").values() if j["owner"] == "alice")

    wait_for(lambda: states() == ["queued"] * 3 + ["running"] * 2, 15, "2 running, 3 queued")
    whys = {j["why"] for j in team.jobs_seen_by("alice").values() if j["state"] == "queued"}
    assert whys == {"alice has 2 job(s) running, its max-running"}
    assert team.jq_as("bob", "true").returncode == 0  # four free slots: bob is not held back
    assert states() == ["queued"] * 3 + ["running"] * 2
    running = next(j for j, info in team.jobs_seen_by("alice").items() if info["state"] == "running")
    assert team.control("alice", "cancel", running).returncode == 0
    wait_for(lambda: states() == ["queued"] * 2 + ["running"] * 2, 15, "the next of alice's to start")


def test_worker_advertising_a_tag_its_key_may_not_is_refused(team: Team) -> None:
    team.start(w2='tags="linux"')
    refused = team.worker_as("w2", "--tag", "linux", "--tag", "gpu", wait=False)
    assert refused.wait(timeout=15) == 1
    text = team.logs[-1].read_text()
    assert "this worker's key (w2) may not advertise tag gpu; its tags= option allows: linux" in text
    team.worker_as("w2", "--tag", "linux")  # within its tags it is welcome


# --- fair share ---------------------------------------------------------------------------------------


def test_fair_share_bobs_five_start_before_alices_next_ten(team: Team) -> None:
    team.start("--fair-share")
    with Executor(team.endpoint, key=team.key("alice"), server_key=team.key("server.pub")) as alice, \
            Executor(team.endpoint, key=team.key("bob"), server_key=team.key("server.pub")) as bob:
        alice_futures = [alice.submit(["true"]) for _ in range(200)]
        wait_for(lambda: len(team.jobs_seen_by("admin")) == 200, 30, "alice's 200 jobs to be queued")
        bob_futures = [bob.submit(["true"]) for _ in range(5)]
        wait_for(lambda: len(team.jobs_seen_by("admin")) == 205, 30, "bob's 5 jobs to be queued")
        # w1's ten free slots are filled at its hello, in one go: alice (the longest-waiting job
        # breaks the 0-0 tie), bob, alice, bob... before any job can end and change the counts
        team.worker_as("w1", "-j", "10")
        team.worker_as("w2", "-j", "2")
        assert all(f.result(timeout=120).returncode == 0 for f in alice_futures + bob_futures)
    log = team.server_log()
    owner = {e["job"]: e["owner"] for e in log if e["event"] == "job-queued"}
    started = [owner[e["job"]] for e in log if e["event"] == "job-started"]
    assert started.count("bob") == 5 and started.count("alice") == 200
    last_bob = max(i for i, who in enumerate(started) if who == "bob")
    assert started[:last_bob].count("alice") < 10, started[:20]  # FIFO: 200 of alice's first


# --- keys change without a restart ---------------------------------------------------------------------


def test_sighup_revokes_bob_and_alices_job_goes_on(team: Team) -> None:
    server = team.start()
    w1 = team.worker_as("w1", "-j", "2")
    pid_file = team.tmp / "bob.pid"
    alice = team.popen_as("alice", "sh", "-c", "sleep 60", "alice-job")
    bob_running = team.popen_as("bob", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 60")
    wait_for(lambda: descendants_alive(pid_file), 15, "bob's job to run")
    bob_queued = team.popen_as("bob", "true")  # both slots busy: it waits
    wait_for(lambda: len(team.jobs_seen_by("admin")) == 3, 15, "bob's second job to be queued")

    team.write_keys(clients=("alice",))
    server.send_signal(signal.SIGHUP)
    for proc in (bob_running, bob_queued):
        assert proc.wait(timeout=15) == 255
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "the key of bob was revoked: the server no longer lists it in --clients" in stderr, stderr
    wait_for(lambda: not descendants_alive(pid_file), 15, "bob's running job to be killed")
    jobs = team.jobs_seen_by("admin")
    assert [j["owner"] for j in jobs.values()] == ["alice"] and alice.poll() is None
    again = team.jq_as("bob", "true")
    assert again.returncode == 255 and b"authentication failed" in again.stderr
    reloads = [e for e in team.server_log() if e["event"] == "keys-reloaded"]
    assert reloads[-1]["revoked"] == reloads[-1]["removed"] == ["bob"]
    assert reloads[-1]["clients"] == 2  # alice and admin

    (team.keys / "workers").write_text(f"{team.public('w2')} w2\n")  # w1's key removed: its job requeues
    team.worker_as("w2")
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: team.jobs_seen_by("admin").get(_job_of(team, "alice", "alice-job"), {}).get("worker") == "w2",
             15, "alice's job to move to w2")
    assert alice.poll() is None and w1.wait(timeout=15) == 1
    assert "the key of w1 was revoked: the server no longer lists it in --workers" in team.logs[1].read_text()


def test_a_revoked_key_that_ignores_its_refusal_is_disconnected(team: Team) -> None:
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from jobqueue import protocol as p
    from jobqueue.security import client_security

    server = team.start()
    security = client_security(team.key("bob"), team.key("server.pub"))
    assert security is not None
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    security.apply_client(sock)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(team.endpoint)
        sock.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "rogue-session", "rogue")))
        assert sock.poll(10_000) and isinstance(p.decode_to_client(sock.recv()), p.Welcome)
        team.write_keys(clients=("alice",))
        server.send_signal(signal.SIGHUP)

        def refused() -> p.Message | None:  # a live client: it pings, as jq does
            sock.send(p.encode(p.Ping()))
            while sock.poll(100):
                reply = p.decode_to_client(sock.recv())
                if isinstance(reply, p.Refused):
                    return reply
            return None

        reply = wait_for(refused, 10, "the refusal")
        assert "the key of bob was revoked" in reply.reason
        sock.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "rogue-session", "rogue")))  # it carries on...
        assert sock.poll(10_000) and isinstance(p.decode_to_client(sock.recv()), p.Refused)
        assert monitor.poll(10_000), "the server did not close the revoked key's connection"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED  # ...until the server closes it
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def test_malformed_keys_file_on_reload_keeps_the_old_keys(team: Team) -> None:
    server = team.start()
    team.worker_as("w1")
    (team.keys / "clients").write_text(f"max-runnin=2 {team.public('alice')} alice\n")
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e["event"] == "error" for e in team.server_log()), 15, "the error line")
    error = next(e for e in team.server_log() if e["event"] == "error")
    assert "the previous keys stay in force" in error["why"] and "unknown option 'max-runnin'" in error["why"]
    assert team.jq_as("bob", "echo", "still here").stdout == b"still here\n"
    assert team.jq_as("alice", "true").returncode == 0


# --- without keys: the Unix user on ipc ------------------------------------------------------------------


def test_ipc_owner_is_the_connecting_unix_user(cluster: Cluster) -> None:
    cluster.server("--ipc-mode", "777")
    cluster.worker()
    me = pwd.getpwuid(os.getuid()).pw_name
    proc = cluster.popen_jq("sh", "-c", "sleep 60", "my-secret")
    mine = wait_for(lambda: next((j for j in cluster.jobs() if j["argv"]), None), 15, "the job")
    assert mine["owner"] == me
    if os.getuid() != 0:
        proc.kill()
        return
    # As root, a second Unix user can be tried: it sees root's job without its command line.
    nobody = pwd.getpwnam("nobody")
    os.chmod(os.path.dirname(cluster.endpoint.removeprefix("ipc://")), 0o755)
    seen = [(j.owner, j.argv) for j in _status_as_user(cluster.endpoint, nobody.pw_uid, nobody.pw_gid).jobs]
    assert seen == [(me, [])]
    proc.kill()


def _status_as_user(endpoint: str, uid: int, gid: int) -> Any:
    """A status request from a forked child that became another Unix user (no exec: that
    user may not be able to read this Python installation)."""
    import zmq

    from jobqueue import protocol as p

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(gid)
            os.setuid(uid)
            sock = zmq.Context().socket(zmq.DEALER)
            sock.connect(endpoint)
            sock.send(p.encode(p.StatusRequest(p.PROTOCOL_VERSION)))
            if sock.poll(10_000):
                os.write(write_end, sock.recv())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return p.decode_to_client(data)
