"""Tenancy: owners, admins, per-key limits and fair share, as pure rules and through the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobqueue import events as ev
from jobqueue import protocol as p
from jobqueue.authkeys import load_access, parse_line
from jobqueue.broker import Broker
from jobqueue.config import UsageError
from jobqueue.jobstate import JobState
from jobqueue.tenancy import LOCAL, Limits, Policy, Tenancy
from tests.unit.test_broker import Harness, _decode

KEYS = [zmq.curve_keypair()[0].decode() for _ in range(6)]


# --- the pure rules ----------------------------------------------------------------------------


def test_owners_see_and_cancel_their_own_admins_everything_drain_needs_an_admin() -> None:
    t = Tenancy(Policy(admins=frozenset({"root"})))
    assert t.may_see("alice", "alice") and not t.may_see("bob", "alice") and t.may_see("root", "alice")
    assert t.may_cancel("alice", "alice") and not t.may_cancel("bob", "alice") and t.may_cancel("root", "bob")
    assert t.may_drain("root") and not t.may_drain("alice")
    single = Tenancy()  # no keys on loopback TCP: one owner, who may do everything
    assert single.may_see(LOCAL, LOCAL) and single.may_drain(LOCAL)


def test_admission_checks_tags_priority_and_queue_quota() -> None:
    t = Tenancy(Policy(clients={"alice": Limits(tags=frozenset({"linux"}), max_queued=2, max_priority=5)}))
    assert t.admit("alice", ["linux"], 5) == ""
    assert t.admit("alice", [], 0) == ""
    assert "tag gpu is not allowed for alice's key" in t.admit("alice", ["linux", "gpu"], 0)
    assert t.admit("alice", [], 6) == "priority 6 is above alice's max-priority=5"
    t.moved("alice", None, JobState.QUEUED)
    t.moved("alice", None, JobState.QUEUED)
    assert t.admit("alice", [], 0).startswith("queue quota of 2 jobs reached")
    t.moved("alice", JobState.QUEUED, JobState.RUNNING)  # running jobs do not count against max-queued
    assert t.admit("alice", [], 0) == ""
    assert t.admit("bob", ["anything"], 99) == ""  # no options: no limits


def test_max_running_and_counts() -> None:
    t = Tenancy(Policy(clients={"alice": Limits(max_running=1)}))
    assert t.may_start("alice") and t.queue_part("alice") == "alice" and t.queue_part("bob") == ""
    t.moved("alice", None, JobState.QUEUED)
    t.moved("alice", JobState.QUEUED, JobState.RUNNING)
    assert not t.may_start("alice") and t.why_held("alice") == "alice has 1 job(s) running, its max-running"
    t.moved("alice", JobState.RUNNING, JobState.FINISHED)
    assert t.may_start("alice") and t.running == {"alice": 0} and t.queued == {"alice": 0}
    assert Tenancy(Policy(fair_share=True)).queue_part("bob") == "bob"


def test_worker_tags() -> None:
    t = Tenancy(Policy(workers={"node-1": frozenset({"linux"})}))
    assert t.worker_refusal("node-1", ["linux"]) == "" and t.worker_refusal("node-2", ["gpu"]) == ""
    assert t.worker_refusal("node-1", ["gpu", "linux"]) == (
        "this worker's key (node-1) may not advertise tag gpu; its tags= option allows: linux")


# --- authorized-keys files --------------------------------------------------------------------


def test_key_lines_with_ssh_style_options() -> None:
    entry = parse_line(f'tags="linux,debian12",max-running=8,max-queued=1000,max-priority=5 {KEYS[0]} alice', "f:1")
    assert entry is not None and entry.name == "alice" and entry.key == KEYS[0].encode()
    assert entry.options == {"tags": "linux,debian12", "max-running": "8", "max-queued": "1000",
                             "max-priority": "5"}
    plain = parse_line(f"{KEYS[1]}", "f:2")
    assert plain is not None and plain.name == f"key-{KEYS[1][:8]}" and plain.options == {}
    assert parse_line("# a comment", "f:3") is None and parse_line("  ", "f:4") is None
    named = parse_line(f"{KEYS[1]} whatever", "d/bob.pub:1", file_name="bob")
    assert named is not None and named.name == "bob"
    for bad, why in [(f'tags="linux {KEYS[0]} a', "unterminated quote"), ("nonsense here", "not a CURVE key"),
                     (f"tags=x,max-running {KEYS[0]} a", "must be NAME=VALUE"), ("tags=x", "no CURVE key"),
                     (f"tags=a,tags=b {KEYS[0]} a", "given twice")]:
        with pytest.raises(UsageError, match=why):
            parse_line(bad, "f:9")


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_access_from_clients_workers_and_admins(tmp_path: Path) -> None:
    pubs = tmp_path / "clients"
    pubs.mkdir()
    _write(pubs / "carol.pub", [f"max-running=1 {KEYS[2]} carol-laptop"])  # a directory: named by the file
    clients = _write(tmp_path / "clients.txt", [f'tags="linux",max-queued=3 {KEYS[0]} alice', f"{KEYS[1]} bob"])
    workers = _write(tmp_path / "workers", [f'tags="gpu" {KEYS[3]} node-gpu-1', f"{KEYS[4]} node-2"])
    admins = _write(tmp_path / "admins", [f"{KEYS[5]} admin", f"{KEYS[1]} ignored-name"])
    access = load_access(clients, workers, admins, fair_share=True)
    assert access.names[KEYS[0].encode()] == "alice" and access.names[KEYS[1].encode()] == "bob"
    assert access.roles[KEYS[5].encode()] == "client" and access.roles[KEYS[3].encode()] == "worker"
    assert access.policy.admins == {"admin", "bob"}  # bob's key is in --admins too: bob is an admin
    assert access.policy.clients == {"alice": Limits(tags=frozenset({"linux"}), max_queued=3)}
    assert access.policy.workers == {"node-gpu-1": frozenset({"gpu"})} and access.policy.fair_share
    assert load_access(str(pubs), workers, None, False).names[KEYS[2].encode()] == "carol"


@pytest.mark.parametrize(("clients", "workers", "why"), [
    ([f"max-runing=2 {KEYS[0]} alice"], [f"{KEYS[3]} w"], "clients:1: unknown option 'max-runing'"),
    ([f"max-running=two {KEYS[0]} alice"], [f"{KEYS[3]} w"], "max-running takes a whole number, got 'two'"),
    ([f"{KEYS[0]} alice"], [f"max-running=2 {KEYS[3]} w"], "a worker key takes only tags="),
    ([f"{KEYS[0]} alice"], [f"{KEYS[0]} w"], "listed as a client and as a worker"),
    ([f"max-running=1 {KEYS[0]} alice", f"{KEYS[1]} alice"], [f"{KEYS[3]} w"], "alice has other options at"),
])
def test_bad_key_files_are_refused_with_file_and_line(tmp_path: Path, clients: list[str], workers: list[str],
                                                      why: str) -> None:
    with pytest.raises(UsageError, match=why):
        load_access(_write(tmp_path / "clients", clients), _write(tmp_path / "workers", workers), None, False)


# --- through the broker -----------------------------------------------------------------------


class TeamHarness(Harness):
    """A broker with a tenancy policy; every message says which owner sent it."""

    def __init__(self, policy: Policy, owners: dict[bytes, str] | None = None) -> None:
        super().__init__()
        self.broker = Broker(self.now, heartbeat=1.0, liveness=5, restart_hold=0.0, wall_clock_ns=10**18,
                             tenancy=Tenancy(policy))
        self.owners = owners or {}

    def raw(self, peer: bytes, data: bytes, role: p.Role | None = None) -> list[tuple[bytes, p.Message]]:
        owner = self.owners.get(peer, LOCAL)
        out = [(s.peer, _decode(s.message)) for s in self.broker.receive(peer, data, self.now, role, owner)]
        self.outbox += out
        return out

    def as_owner(self, peer: bytes, owner: str, msg: p.Message) -> Any:
        self.owners[peer] = owner
        return self.send(peer, msg)[-1][1]

    def status(self, owner: str) -> p.StatusReply:
        reply = self.as_owner(b"status-" + owner.encode(), owner, p.StatusRequest(p.PROTOCOL_VERSION))
        assert isinstance(reply, p.StatusReply)
        return reply

    def finish(self, worker: bytes, job_id: str) -> None:
        self.send(worker, p.Finished(job_id, 1, 0, "exited"))
        self.send(self._client_of(job_id), p.Release(job_id, 1))

    def _client_of(self, job_id: str) -> bytes:
        owner = self.broker.jobs[job_id].owner
        assert owner is not None
        return owner.identity


TEAM = {b"a": "alice", b"b": "bob", b"r": "root"}


def test_status_shows_own_jobs_in_full_and_others_without_command_directory_or_tags() -> None:
    h = TeamHarness(Policy(admins=frozenset({"root"})), dict(TEAM))
    for peer in (b"a", b"b"):
        h.client(peer)
        h.send(peer, p.Submit(f"j-{peer.decode()}", p.JobSpec([b"secret", peer], {}, b"/home/" + peer,
                                                             tags=["t"])))
    alice = {j.job_id: j for j in h.status("alice").jobs}
    assert alice["j-a"].argv == ["secret", "a"] and alice["j-a"].cwd == "/home/a" and alice["j-a"].tags == ["t"]
    assert alice["j-b"].owner == "bob" and (alice["j-b"].argv, alice["j-b"].cwd, alice["j-b"].tags) == ([], "", [])
    assert alice["j-b"].why == "" and alice["j-b"].state == "queued"
    root = {j.job_id: j for j in h.status("root").jobs}
    assert root["j-a"].argv == ["secret", "a"] and root["j-b"].argv == ["secret", "b"]


def test_cancel_of_another_owners_job_is_refused_and_an_admin_may() -> None:
    h = TeamHarness(Policy(admins=frozenset({"root"})), dict(TEAM))
    h.client(b"a")
    h.submit(b"a", "j1")
    reply = h.as_owner(b"ctl-b", "bob", p.CancelRequest(p.PROTOCOL_VERSION, ["j1"], 15))
    assert reply == p.ControlReply([], [], ["job j1 belongs to alice: only an admin may cancel it"])
    assert h.state("j1") is JobState.QUEUED
    assert any(isinstance(e, ev.Rejected) and e.owner == "bob" for e in h.broker.events)
    reply = h.as_owner(b"ctl-r", "root", p.CancelRequest(p.PROTOCOL_VERSION, ["j1"], 15))
    assert reply.done == ["j1"] and h.state("j1") is None
    assert any(isinstance(e, ev.JobCancelled) and e.by == "root" for e in h.broker.events)


def test_drain_needs_an_admin() -> None:
    h = TeamHarness(Policy(admins=frozenset({"root"})), dict(TEAM))
    h.worker(b"w")
    reply = h.as_owner(b"ctl-a", "alice", p.DrainRequest(p.PROTOCOL_VERSION, ["w"]))
    assert reply.refused == ["only an admin may drain workers (alice is not one: see --admins)"]
    assert not h.to(b"w", p.Drain)
    assert h.as_owner(b"ctl-r", "root", p.DrainRequest(p.PROTOCOL_VERSION, ["w"])).done == ["w"]
    assert h.to(b"w", p.Drain)


def test_refused_submissions_queue_nothing() -> None:
    limits = Limits(tags=frozenset({"linux"}), max_queued=1, max_priority=5)
    h = TeamHarness(Policy(clients={"alice": limits}), dict(TEAM))
    h.client(b"a")
    h.submit(b"a", "gpu", tags=["gpu"])
    h.submit(b"a", "urgent", priority=9)
    h.submit(b"a", "ok")
    h.submit(b"a", "one-too-many")
    reasons = [e.reason for e in h.to(b"a", p.Error)]
    assert "tag gpu is not allowed" in reasons[0] and "above alice's max-priority=5" in reasons[1]
    assert reasons[2] == "queue quota of 1 jobs reached (alice's max-queued)"
    assert list(h.broker.jobs) == ["ok"]


def test_max_running_holds_the_rest_and_status_says_why() -> None:
    h = TeamHarness(Policy(clients={"alice": Limits(max_running=2)}), dict(TEAM))
    h.client(b"a")
    h.client(b"b")
    for i in range(5):
        h.submit(b"a", f"a{i}")
    h.submit(b"b", "b0")
    for i in range(4):
        h.worker(f"w{i}".encode())
    running = {j for j, job in h.broker.jobs.items() if job.state is JobState.RUNNING}
    assert running == {"a0", "a1", "b0"}  # bob is not held back by alice's limit
    why = {j.job_id: j.why for j in h.status("alice").jobs}
    assert why["a2"] == "alice has 2 job(s) running, its max-running"
    worker = h.broker.jobs["a0"].worker
    assert worker is not None
    h.finish(worker.identity, "a0")
    assert h.state("a2") is JobState.RUNNING and h.state("a3") is JobState.QUEUED


def _start_order(fair_share: bool) -> list[str]:
    h = TeamHarness(Policy(fair_share=fair_share), dict(TEAM))
    h.client(b"a")
    h.client(b"b")
    for i in range(200):
        h.submit(b"a", f"a{i}")
    for i in range(5):
        h.submit(b"b", f"b{i}")
    order = [msg.job_id for _, msg in h.worker(b"w", slots=2) if isinstance(msg, p.Assign)]
    while len(order) < 30:
        job_id = order[-2] if h.state(order[-2]) is JobState.RUNNING else order[-1]
        h.outbox.clear()
        h.finish(b"w", job_id)
        order += [m.job_id for _, m in h.outbox if isinstance(m, p.Assign)]
    return order


def test_fair_share_serves_owners_in_turn_within_a_priority() -> None:
    fifo = _start_order(fair_share=False)
    assert fifo[:30] == [f"a{i}" for i in range(30)]
    fair = _start_order(fair_share=True)
    bobs = [fair.index(f"b{i}") for i in range(5)]
    alices_after_bob = [j for j in fair if j.startswith("a")]
    assert max(bobs) < fair.index(alices_after_bob[10])  # all of bob's before alice's next 10
    assert fair[:2] == ["a0", "b0"]  # a tie goes to the longest-waiting job


def test_fair_share_keeps_priorities() -> None:
    h = TeamHarness(Policy(fair_share=True), dict(TEAM))
    h.client(b"a")
    h.client(b"b")
    h.submit(b"a", "a-urgent", priority=5)
    h.submit(b"a", "a-urgent-2", priority=5)
    h.submit(b"b", "b-normal")
    out = h.worker(b"w", slots=2)
    assert [m.job_id for _, m in out if isinstance(m, p.Assign)] == ["a-urgent", "a-urgent-2"]


def test_worker_may_advertise_only_its_keys_tags() -> None:
    h = TeamHarness(Policy(workers={"node-1": frozenset({"linux"})}), {b"w": "node-1"})
    out = h.worker(b"w", tags=["linux", "gpu"])
    assert isinstance(out[0][1], p.Refused) and "may not advertise tag gpu" in out[0][1].reason
    assert h.broker.peers == {}


def test_revoked_client_loses_its_jobs_and_revoked_worker_requeues() -> None:
    h = TeamHarness(Policy(), dict(TEAM))
    h.client(b"a")
    h.client(b"b")
    h.worker(b"w1", slots=2)
    h.submit(b"b", "b-running")
    h.submit(b"a", "a-running")
    h.submit(b"b", "b-queued")
    out = [(s.peer, _decode(s.message)) for s in h.broker.revoke(b"b", "the key of bob was revoked", h.now)]
    assert (b"b", p.Refused("the key of bob was revoked")) in out
    assert any(peer == b"w1" and isinstance(m, p.Kill) and m.job_id == "b-running" for peer, m in out)
    assert set(h.broker.jobs) == {"a-running"} and b"b" not in h.broker.peers
    h.worker(b"w2")
    out = [(s.peer, _decode(s.message)) for s in h.broker.revoke(b"w1", "revoked", h.now)]
    assert (b"w1", p.Refused("revoked")) in out
    assert h.broker.jobs["a-running"].worker is not None and h.broker.jobs["a-running"].worker.name == "w2"


def test_reconfigure_regroups_the_queue_and_disconnects_workers_with_forbidden_tags() -> None:
    h = TeamHarness(Policy(), {b"a": "alice", b"w": "node-1"})
    h.client(b"a")
    for i in range(3):
        h.submit(b"a", f"a{i}")
    h.worker(b"w", tags=["gpu"])  # takes a0
    out = h.broker.configure(Policy(clients={"alice": Limits(max_running=1)},
                                    workers={"node-1": frozenset()}), h.now)
    assert any(isinstance(s.message, p.Refused) for s in out)
    assert h.state("a0") is JobState.REQUEUED
    h.owners[b"w2"] = "node-2"
    h.worker(b"w2", slots=3)
    assert [j for j, job in h.broker.jobs.items() if job.state is JobState.RUNNING] == ["a0"]


def test_a_session_cannot_move_to_another_owner() -> None:
    h = TeamHarness(Policy(), dict(TEAM))
    h.as_owner(b"a", "alice", p.ClientHello(p.PROTOCOL_VERSION, "s1"))
    reply = h.as_owner(b"x", "bob", p.ClientHello(p.PROTOCOL_VERSION, "s1"))
    assert isinstance(reply, p.Refused) and "another owner" in reply.reason


# --- the property: nobody sees another's job in full ------------------------------------------

OWNERS = ["alice", "bob", "carol", "root"]
actions = st.lists(st.tuples(st.sampled_from(["submit", "status", "worker", "finish", "cancel", "lose"]),
                             st.sampled_from(OWNERS), st.integers(0, 5)), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=actions, fair_share=st.booleans())
def test_no_owner_ever_sees_another_owners_job_in_full(actions: list[tuple[str, str, int]],
                                                       fair_share: bool) -> None:
    policy = Policy(clients={"carol": Limits(max_running=1)}, admins=frozenset({"root"}), fair_share=fair_share)
    h = TeamHarness(policy)
    for owner in OWNERS:
        h.as_owner(owner.encode(), owner, p.ClientHello(p.PROTOCOL_VERSION, owner))
    submitted = 0
    for action, owner, n in actions:
        if action == "submit":
            submitted += 1
            secret = f"secret-of-{owner}-{submitted}"
            spec = p.JobSpec([b"run", secret.encode()], {}, f"/{secret}".encode(), tags=[f"tag-of-{owner}"][: n % 2])
            h.send(owner.encode(), p.Submit(f"{owner}-{submitted}", spec))
        elif action == "worker":
            h.worker(f"w{n}".encode(), slots=1 + n % 2, tags=[f"tag-of-{owner}"])
        elif action == "finish":
            running = [j for j, job in h.broker.jobs.items() if job.state is JobState.RUNNING and job.worker]
            if running:
                job = h.broker.jobs[running[n % len(running)]]
                assert job.worker is not None
                h.finish(job.worker.identity, job.job_id)
        elif action == "cancel":
            h.as_owner(f"ctl-{owner}".encode(), owner, p.CancelRequest(p.PROTOCOL_VERSION, list(h.broker.jobs)[:1], 15))
        elif action == "lose":
            h.advance(6.0)
            for other in OWNERS:
                h.as_owner(other.encode(), other, p.ClientHello(p.PROTOCOL_VERSION, other))
        else:
            reply = h.status(owner)
            encoded = p.encode(reply)
            for info in reply.jobs:
                if owner != "root" and info.owner != owner:
                    assert (info.argv, info.cwd, info.tags, info.why) == ([], "", [], "")
            for other in OWNERS:
                if other not in (owner, "root") and owner != "root":
                    assert f"secret-of-{other}".encode() not in encoded
                    assert f"tag-of-{other}".encode() not in b"".join(
                        p.encode(j) for j in reply.jobs)  # workers' tags are public, jobs' are not
