"""The broker state machine, driven without sockets or clocks."""

from __future__ import annotations

import signal
from typing import Any

import msgspec
import pytest

from jobqueue import protocol as p
from jobqueue.broker import Broker
from jobqueue.jobstate import TRANSITIONS, IllegalTransition, JobEvent, JobState, next_state

HB = 1.0
LOST = HB * 5


class Harness:
    """A broker plus helpers that speak the protocol to it as peers would."""

    def __init__(self, now: float = 100.0, hold: float = 0.0) -> None:
        self.now = now
        self.broker = Broker(now, heartbeat=HB, liveness=5, restart_hold=hold, wall_clock_ns=10**18)
        self.outbox: list[tuple[bytes, p.Message]] = []

    def send(self, peer: bytes, msg: p.Message, role: p.Role | None = None) -> list[tuple[bytes, p.Message]]:
        return self.raw(peer, p.encode(msg), role)

    def raw(self, peer: bytes, data: bytes, role: p.Role | None = None) -> list[tuple[bytes, p.Message]]:
        out = [(s.peer, _decode(s.message)) for s in self.broker.receive(peer, data, self.now, role)]
        self.outbox += out
        return out

    def advance(self, seconds: float) -> list[tuple[bytes, p.Message]]:
        self.now += seconds
        out = [(s.peer, _decode(s.message)) for s in self.broker.tick(self.now)]
        self.outbox += out
        return out

    def client(self, peer: bytes, session: str | None = None, previous_server: str = "") -> None:
        self.send(peer, p.ClientHello(p.PROTOCOL_VERSION, session or peer.decode(), "c",
                                      previous_server=previous_server))

    def worker(self, peer: bytes, slots: int = 1, tags: list[str] | None = None,
               jobs: list[p.ActiveJob] | None = None, session: str | None = None,
               previous_server: str = "") -> list[tuple[bytes, p.Message]]:
        hello = p.WorkerHello(p.PROTOCOL_VERSION, session or peer.decode(), peer.decode(), "h", 1, "0", slots,
                              tags or [], jobs or [], previous_server=previous_server)
        return self.send(peer, hello)

    def submit(self, client: bytes, job_id: str, argv: list[bytes] | None = None, **spec: Any) -> None:
        self.send(client, p.Submit(job_id, p.JobSpec(argv or [b"true"], {}, b"/", **spec)))

    def assigned(self, out: list[tuple[bytes, p.Message]]) -> list[tuple[bytes, str, int]]:
        return [(peer, m.job_id, m.attempt) for peer, m in out if isinstance(m, p.Assign)]

    def to(self, peer: bytes, kind: type) -> list[Any]:
        return [m for target, m in self.outbox if target == peer and isinstance(m, kind)]

    def state(self, job_id: str) -> JobState | None:
        job = self.broker.jobs.get(job_id)
        return job.state if job else None


def _decode(message: p.Message | bytes) -> p.Message:
    if isinstance(message, p.AssignRaw):  # what a worker would decode
        return p.decode_to_worker(p.encode(message))
    if isinstance(message, bytes):
        for decode in (p.decode_to_client, p.decode_to_worker):
            try:
                return decode(message)
            except p.ProtocolError:
                pass
        raise AssertionError("undecodable relay")
    return message


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- lifecycle table --------------------------------------------------------------------


def test_every_transition_is_in_one_table() -> None:
    assert next_state("j", None, JobEvent.SUBMIT) is JobState.QUEUED
    assert next_state("j", JobState.RUNNING, JobEvent.WORKER_LOST) is JobState.REQUEUED
    for state in JobState:
        for event in JobEvent:
            if (state, event) not in TRANSITIONS:
                with pytest.raises(IllegalTransition, match="not allowed"):
                    next_state("j", state, event)


def test_terminal_states_never_run_again() -> None:
    for (state, event), target in TRANSITIONS.items():
        if state in (JobState.CANCELLED, JobState.LOST):
            pytest.fail(f"{state} has an exit {event}->{target}")
        if state is JobState.FINISHED:
            assert target is JobState.FINISHED


# --- matching -----------------------------------------------------------------------------


def test_job_goes_to_ready_worker_and_output_is_routed(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", "j1")
    assert h.to(b"w1", p.Assign)[0].job_id == "j1"
    h.send(b"w1", p.Started("j1", 1, 42))
    assert h.to(b"c1", p.Started)[0].worker == "w1"
    h.send(b"w1", p.Output("j1", 1, 1, 0, b"hello"))
    assert h.to(b"c1", p.Output)[0].data == b"hello"
    h.send(b"c1", p.Ack("j1", 1, 1, 5))
    assert h.to(b"w1", p.Ack)[0].offset == 5
    h.send(b"c1", p.Input("j1", 1, 0, b"in", True))
    assert h.to(b"w1", p.Input)[0].data == b"in"
    h.send(b"w1", p.Finished("j1", 1, 3, "exited", "", [5, 0]))
    assert h.to(b"c1", p.Finished)[0].status == 3
    assert h.state("j1") is JobState.FINISHED
    h.send(b"c1", p.Release("j1", 1))
    assert h.to(b"w1", p.Release) == [p.Release("j1", 1)] and h.state("j1") is None


def test_stream_data_that_is_not_bytes_is_refused_not_relayed(h: Harness) -> None:
    """The server relays Input and Output frames without decoding their data: it must
    still check that the data is bytes, or one bad client could stop a worker."""
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", "j1")
    h.send(b"w1", p.Started("j1", 1, 42))
    bad_input = msgspec.msgpack.encode(["in", "j1", 1, 0, "text, not bytes", False])
    out = h.raw(b"c1", bad_input)
    assert [peer for peer, _ in out] == [b"c1"] and "must be bytes" in h_reason(out)
    bad_output = msgspec.msgpack.encode(["out", "j1", 1, 1, 0, 12345])
    out = h.raw(b"w1", bad_output)
    assert [peer for peer, _ in out] == [b"w1"] and "must be bytes" in h_reason(out)
    out = h.send(b"c1", p.Input("j1", 1, 0, b"fine", True))  # the job is not hurt
    assert [(peer, type(m)) for peer, m in out] == [(b"w1", p.Input)]


def h_reason(out: list[tuple[bytes, p.Message]]) -> str:
    message = out[0][1]
    assert isinstance(message, p.Error), message
    return message.reason


def test_fifo_and_longest_waiting_worker_first(h: Harness) -> None:
    h.client(b"c")
    for i in range(3):
        h.submit(b"c", f"j{i}")
    h.worker(b"wa")
    h.now += 1
    h.worker(b"wb")
    # wa waited longest: it got j0 the moment it joined; wb got j1.
    assert [(peer, job) for peer, job, _ in h.assigned(h.outbox)] == [(b"wa", "j0"), (b"wb", "j1")]
    h.send(b"wb", p.Finished("j1", 1, 0, "exited"))
    h.send(b"wa", p.Finished("j0", 1, 0, "exited"))
    assert h.assigned(h.outbox)[-1][:2] == (b"wb", "j2")


def test_priority_then_fifo(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "low")
    h.submit(b"c", "high", priority=5)
    h.submit(b"c", "low2")
    h.worker(b"w", slots=3)
    assert [job for _, job, _ in h.assigned(h.outbox)] == ["high", "low", "low2"]


def test_tags_must_all_match(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "gpu", tags=["gpu", "debian"])
    h.worker(b"plain")
    h.worker(b"gpuonly", tags=["gpu"])
    assert h.assigned(h.outbox) == []
    status = h.send(b"x", p.StatusRequest(p.PROTOCOL_VERSION))[0][1]
    assert isinstance(status, p.StatusReply)
    assert "no connected worker has tags debian,gpu" in status.jobs[0].why
    h.worker(b"both", tags=["debian", "gpu", "big"])
    assert h.assigned(h.outbox) == [(b"both", "gpu", 1)]


def test_never_assigns_more_than_free_slots(h: Harness) -> None:
    h.client(b"c")
    for i in range(5):
        h.submit(b"c", f"j{i}")
    h.worker(b"w", slots=2)
    assert len(h.assigned(h.outbox)) == 2
    h.send(b"w", p.Finished("j0", 1, 0, "exited"))
    assert len(h.assigned(h.outbox)) == 3


def test_restart_hold_delays_dispatch_once_a_peer_of_the_previous_server_says_hello() -> None:
    h = Harness(hold=2.0)
    h.client(b"c", previous_server="old-server")
    h.worker(b"w")
    h.submit(b"c", "j")
    assert h.assigned(h.outbox) == []
    assert h.broker.next_deadline() == pytest.approx(102.0)
    h.advance(2.0)
    assert h.assigned(h.outbox) == [(b"w", "j", 1)]


def test_fresh_server_dispatches_the_first_job_at_once() -> None:
    h = Harness(hold=2.0)
    h.worker(b"w")
    h.client(b"c")
    h.submit(b"c", "j")
    assert h.assigned(h.outbox) == [(b"w", "j", 1)]


def test_restart_hold_keeps_the_order_of_reannounced_tickets() -> None:
    h = Harness(hold=2.0)
    h.worker(b"w", previous_server="old-server")
    h.client(b"new")
    h.submit(b"new", "fresh")
    h.client(b"old", previous_server="old-server")
    h.send(b"old", p.Submit("early", p.JobSpec([b"true"], {}, b"/"), ticket=5))
    assert h.assigned(h.outbox) == []
    h.advance(2.0)
    assert h.assigned(h.outbox) == [(b"w", "early", 1)]


# --- losses ---------------------------------------------------------------------------------


def test_lost_worker_job_is_requeued_then_poisoned(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "j", max_attempts=2)
    for n, worker in enumerate((b"w1", b"w2")):
        h.worker(worker)
        assert h.assigned(h.outbox)[-1] == (worker, "j", n + 1)
        for _ in range(6):  # the client keeps pinging; the worker is silent
            h.send(b"c", p.Ping())
            h.advance(1.0)
    assert len(h.to(b"c", p.Requeued)) == 1
    end = h.to(b"c", p.Finished)[0]
    assert (end.status, end.reason) == (255, "lost") and "lost 2 times" in end.message
    assert h.state("j") is None


def test_polite_goodbye_requeues_at_once_without_counting(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "j", max_attempts=1)
    h.worker(b"w1")
    h.send(b"w1", p.Goodbye("SIGTERM"))
    assert h.to(b"c", p.Requeued) and h.state("j") is JobState.REQUEUED
    h.worker(b"w2")
    assert h.assigned(h.outbox)[-1] == (b"w2", "j", 2)


def test_lost_client_drops_queued_and_kills_running(h: Harness) -> None:
    h.client(b"c")
    h.worker(b"w")
    h.submit(b"c", "run")
    h.submit(b"c", "wait")
    for _ in range(6):
        h.send(b"w", p.Ping())
        h.advance(1.0)
    assert h.to(b"w", p.Kill)[0].job_id == "run"
    assert h.broker.jobs == {}
    # The slot stays busy until the worker reports the killed job's end.
    assert h.broker.scheduler.ready == {}
    h.send(b"w", p.Finished("run", 1, 143, "killed"))
    assert len(h.broker.scheduler.ready) == 1


def test_cancel_queued_job(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "j")
    h.send(b"c", p.Signal("j", signal.SIGINT))
    end = h.to(b"c", p.Finished)[0]
    assert (end.status, end.reason) == (130, "cancelled")
    h.worker(b"w")
    assert h.assigned(h.outbox) == []


# --- authority -------------------------------------------------------------------------------


def test_worker_cannot_write_to_a_job_it_was_not_given(h: Harness) -> None:
    h.client(b"c")
    h.worker(b"w1")
    h.worker(b"w2")
    h.submit(b"c", "j")
    owner = h.assigned(h.outbox)[0][0]
    intruder = b"w2" if owner == b"w1" else b"w1"
    h.send(intruder, p.Output("j", 1, 1, 0, b"forged"))
    h.send(intruder, p.Finished("j", 1, 0, "exited"))
    assert h.to(b"c", p.Output) == [] and h.to(b"c", p.Finished) == []
    assert h.state("j") is JobState.RUNNING


def test_client_cannot_touch_another_clients_job(h: Harness) -> None:
    h.client(b"c1")
    h.client(b"c2")
    h.worker(b"w")
    h.submit(b"c1", "j")
    h.send(b"c2", p.Signal("j", 9))
    h.send(b"c2", p.Input("j", 1, 0, b"x"))
    assert h.to(b"w", p.Signal) == [] and h.to(b"w", p.Input) == []
    assert "no job j of yours" in h.to(b"c2", p.Error)[0].reason
    h.submit(b"c2", "j")
    assert "in use by another client" in h.to(b"c2", p.Error)[-1].reason


def test_roles_are_enforced(h: Harness) -> None:
    h.client(b"c")
    h.send(b"c", p.Started("j", 1, 1))
    assert "a client may not send Started" in h.to(b"c", p.Error)[0].reason
    out = h.send(b"k", p.WorkerHello(p.PROTOCOL_VERSION, "s", "n", "h", 1, "0", 1), role="client")
    assert isinstance(out[0][1], p.Refused) and "authorized as a client" in out[0][1].reason


def test_version_mismatch_names_both_versions(h: Harness) -> None:
    out = h.send(b"c", p.ClientHello(99, "s"))
    assert isinstance(out[0][1], p.Refused)
    assert f"server speaks version {p.PROTOCOL_VERSION}, peer speaks version 99" in out[0][1].reason


def test_unknown_peer_is_told_to_say_hello(h: Harness) -> None:
    out = h.send(b"stranger", p.Ping())
    assert isinstance(out[0][1], p.Unknown)


def test_invalid_submissions_are_refused(h: Harness) -> None:
    h.client(b"c")
    h.send(b"c", p.Submit("", p.JobSpec([b"x"], {}, b"/")))
    h.send(b"c", p.Submit("j", p.JobSpec([], {}, b"/")))
    h.send(b"c", p.Submit("j", p.JobSpec([b"x"], {}, b"/", max_attempts=0)))
    reasons = [e.reason for e in h.to(b"c", p.Error)]
    assert len(reasons) == 3 and "empty command line" in reasons[1]
    assert h.broker.jobs == {}


@pytest.mark.parametrize("argv, env, cwd", [
    ([b"x\0y"], {}, b"/"), ([b"x"], {b"A": b"1\0"}, b"/"), ([b"x"], {b"A\0": b"1"}, b"/"),
    ([b"x"], {}, b"/t\0"), ([b"x"], {b"A=B": b"1"}, b"/"), ([b"x"], {b"": b"1"}, b"/"),
])
def test_nul_bytes_and_bad_variable_names_are_refused(h: Harness, argv: list[bytes], env: dict[bytes, bytes],
                                                      cwd: bytes) -> None:
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec(argv, {b"PATH": b"/bin", **env, b"HOME": b"/h=x"}, cwd)))
    assert [e.reason for e in h.to(b"c", p.Error)] == [
        "NUL byte in the command line, directory or environment, or a bad variable name"]
    assert h.broker.jobs == {}
    h.send(b"c", p.Submit("k", p.JobSpec([b"x"], {b"PATH": b"/bin", b"HOME": b"/h=x"}, b"/")))  # '=' in a value is fine
    assert "k" in h.broker.jobs


# --- restart: rebuilt from what peers say --------------------------------------------------------


def test_running_job_reattaches_after_restart_worker_first(h: Harness) -> None:
    h.worker(b"w", jobs=[p.ActiveJob("j", 2, [b"sleep"], [])])
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"sleep"], {}, b"/"), ticket=7, attempt=2, running=True, offsets=[10, 3]))
    resume = h.to(b"w", p.Resume)[0]
    assert (resume.attempt, resume.offsets) == (2, [10, 3])
    assert h.to(b"c", p.Started)[0].resumed
    h.send(b"w", p.Output("j", 2, 1, 10, b"more"))
    assert h.to(b"c", p.Output)[0].data == b"more"


def test_running_job_reattaches_after_restart_client_first(h: Harness) -> None:
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"sleep"], {}, b"/"), ticket=7, attempt=1, running=True, offsets=[4, 0]))
    assert h.state("j") is JobState.RUNNING and h.assigned(h.outbox) == []
    h.worker(b"w", jobs=[p.ActiveJob("j", 1, [b"sleep"], [])])
    assert h.to(b"w", p.Resume)[0].offsets == [4, 0]
    assert h.assigned(h.outbox) == []


def test_job_its_client_requeued_unaware_it_had_started_is_adopted_from_its_worker(h: Harness) -> None:
    """The server died before relaying Started: the client re-queues the job at attempt 0,
    then its worker says it ran attempt 1 to the end.  That run is the job's: it is
    resumed for the client, not killed as stale and run a second time."""
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"x"], {}, b"/"), ticket=7))
    assert h.state("j") is JobState.QUEUED
    h.worker(b"w", jobs=[p.ActiveJob("j", 1, [b"x"], [], finished=True)])
    assert h.to(b"w", p.Kill) == [] and h.assigned(h.outbox) == []
    assert h.to(b"w", p.Resume)[0].offsets == [0, 0]
    started = h.to(b"c", p.Started)[0]
    assert (started.attempt, started.resumed) == (1, True)
    assert h.state("j") is JobState.FINISHED
    h.send(b"w", p.Output("j", 1, 1, 0, b"all of it"))
    h.send(b"w", p.Finished("j", 1, 3, "exited", offsets=[9, 0]))
    assert h.to(b"c", p.Output)[0].data == b"all of it" and h.to(b"c", p.Finished)[0].status == 3


def test_requeued_job_resubmitted_after_a_restart_keeps_counting_attempts(h: Harness) -> None:
    """Its client was told attempt 1 is requeued, then the server restarted: the next run is
    attempt 2, so the old run (its worker may come back) can never pass for the new one."""
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"x"], {}, b"/"), ticket=7, attempt=1))
    h.worker(b"w")
    assert h.assigned(h.outbox) == [(b"w", "j", 2)]


def test_stale_run_of_a_requeued_job_is_killed_when_its_worker_comes_back(h: Harness) -> None:
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"x"], {}, b"/"), ticket=7, attempt=1))
    h.worker(b"old", jobs=[p.ActiveJob("j", 1, [b"x"], [])])
    assert h.to(b"old", p.Kill)[0].attempt == 1 and h.to(b"old", p.Resume) == []


def test_a_peer_silent_for_exactly_its_liveness_is_lost_at_the_deadline_the_broker_gave() -> None:
    """tick() must act at the time next_deadline() names (same arithmetic), or a shell
    that sleeps until then spins without progress."""
    h = Harness(now=0.1)
    h.worker(b"w")
    deadline = h.broker.next_deadline()
    assert deadline is not None
    h.now = deadline
    h.broker.tick(h.now)
    assert b"w" not in h.broker.peers and (h.broker.next_deadline() or deadline + 1) > deadline


def test_reattach_gives_up_when_worker_never_returns(h: Harness) -> None:
    h.client(b"c")
    h.send(b"c", p.Submit("j", p.JobSpec([b"x"], {}, b"/"), ticket=7, attempt=1, running=True))
    for _ in range(6):
        h.send(b"c", p.Ping())
        h.advance(1.0)
    assert h.to(b"c", p.Requeued) and h.state("j") is JobState.REQUEUED


def test_queued_order_survives_restart_by_ticket(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "new")
    h.send(b"c", p.Submit("old", p.JobSpec([b"x"], {}, b"/"), ticket=1))
    h.worker(b"w")
    assert h.assigned(h.outbox)[0][1] == "old"


def test_orphan_job_of_vanished_client_is_killed(h: Harness) -> None:
    h.worker(b"w", jobs=[p.ActiveJob("j", 1, [b"x"], [])])
    h.send(b"w", p.Ping())
    h.advance(LOST - 0.5)
    h.send(b"w", p.Ping())
    h.advance(1.0)
    assert h.to(b"w", p.Kill)[0].job_id == "j"


def test_stale_attempt_is_killed(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "j")
    h.worker(b"w1")
    h.send(b"w1", p.Goodbye())
    h.worker(b"w2")
    h.worker(b"w1again", jobs=[p.ActiveJob("j", 1, [b"x"], [])])
    assert h.to(b"w1again", p.Kill)[0].attempt == 1


def test_session_moves_to_new_connection_without_loss(h: Harness) -> None:
    h.client(b"c-old", session="S")
    h.worker(b"w")
    h.submit(b"c-old", "j")
    h.client(b"c-new", session="S")
    h.send(b"w", p.Output("j", 1, 1, 0, b"x"))
    assert h.to(b"c-new", p.Output)[0].data == b"x"
    for _ in range(7):
        h.send(b"w", p.Ping())
        h.send(b"c-new", p.Ping())
        h.advance(1.0)
    assert h.state("j") is JobState.RUNNING


def test_status_lists_workers_and_jobs(h: Harness) -> None:
    h.client(b"c")
    h.worker(b"w", tags=["t"])
    h.submit(b"c", "j", [b"echo", b"hi"])
    h.submit(b"c", "k")
    reply = h.send(b"x", p.StatusRequest(p.PROTOCOL_VERSION))[0][1]
    assert isinstance(reply, p.StatusReply)
    assert [(w.name, w.state, w.jobs) for w in reply.workers] == [("w", "busy", ["j"])]
    assert [(j.job_id, j.state) for j in reply.jobs] == [("j", "running"), ("k", "queued")]


def test_unreachable_worker_is_lost_after_two_heartbeats(h: Harness) -> None:
    h.client(b"c")
    h.submit(b"c", "j")
    h.worker(b"w1")
    h.worker(b"w2")
    assert h.broker.peer_gone(b"w1", h.now) == []
    assert h.broker.next_deadline() == pytest.approx(h.now + 2 * HB)
    out = h.advance(2 * HB)
    assert any(isinstance(m, p.Requeued) for _, m in out)
    assert (b"w2", "j", 2) in h.assigned(out)
    assert h.broker.peer_gone(b"unknown", h.now) == []


def test_unreachable_peer_that_reconnects_keeps_its_jobs(h: Harness) -> None:
    h.client(b"c-old", session="S")
    h.worker(b"w")
    h.submit(b"c-old", "j")
    h.broker.peer_gone(b"c-old", h.now)
    h.now += HB
    h.client(b"c-new", session="S")
    h.send(b"w", p.Ping())
    h.advance(2 * HB)
    assert h.state("j") is JobState.RUNNING and h.to(b"w", p.Kill) == []


def test_queued_job_keeps_its_spec_encoded_and_the_worker_gets_it_whole(h: Harness) -> None:
    h.client(b"c")
    env = {f"VAR{i}".encode(): b"x" * 50 for i in range(40)}
    h.send(b"c", p.Submit("j", p.JobSpec([b"run", b"caf\xe9"], env, b"/work", tags=["t"], priority=2)))
    job = h.broker.jobs["j"]
    assert not hasattr(job, "spec") and len(job.raw_spec) > 2000  # not kept decoded while queued
    assert (job.argv, job.tags, job.priority) == (["run", "caf\\xe9"], ["t"], 2)  # readable
    h.worker(b"w", tags=["t"])
    spec = h.to(b"w", p.Assign)[0].spec
    assert (spec.argv, spec.env, spec.cwd, spec.tags, spec.priority) == ([b"run", b"caf\xe9"], env, b"/work", ["t"], 2)


def test_job_known_only_from_its_worker_is_dropped_when_that_worker_is_lost(h: Harness) -> None:
    h.worker(b"w1", jobs=[p.ActiveJob("j", 1, [b"x"], [])])
    h.worker(b"w2")
    for _ in range(6):
        h.send(b"w2", p.Ping())
        h.advance(1.0)
    assert h.state("j") is None and h.assigned(h.outbox) == []
