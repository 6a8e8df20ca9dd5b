"""The Python API's cancelled jobs across server outages (jobqueue.api_cancel; fake clock and link)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import protocol as p
from jobqueue.api_cancel import SIGTERM, CancelledJob
from jobqueue.client import ClientJob, Session
from jobqueue.connection import Connection
from tests.unit.test_client_job import Recorder


class Link:
    """The connection as the executor sees it (``answered``: when the latest ping the
    server answered was sent), and the job's news."""

    def __init__(self, up: bool = True) -> None:
        self.up, self.generation, self.answered = up, 1, 0.0
        self.running, self.attempt, self.news, self.news_generation = False, 0, 0, 1

    def drop(self) -> None:
        self.up, self.generation = False, self.generation + 1

    def back(self, now: float) -> None:
        self.up, self.generation, self.answered = True, self.generation + 1, 0.0

    def say(self, running: bool, attempt: int | None = None) -> None:
        """The server says where the job stands (Queued, Started, Requeued), on this connection."""
        self.running, self.news, self.news_generation = running, self.news + 1, self.generation
        if attempt is not None:
            self.attempt = attempt

    @property
    def attached(self) -> bool:
        return self.news_generation == self.generation


def poll(cancel: CancelledJob, link: Link, now: float) -> bool:
    return cancel.poll(now, up=link.up, generation=link.generation, answered=link.answered,
                       running=link.running, attempt=link.attempt, news=link.news, attached=link.attached)


def test_a_job_not_started_is_withdrawn_at_once_whatever_the_link() -> None:
    for up in (True, False):
        cancel, link = CancelledJob(1.0), Link(up)
        assert poll(cancel, link, 5.0)  # out now, on whatever connection there is
        assert not poll(cancel, link, 6.0)
        link.back(7.0)
        assert not poll(cancel, link, 7.0)  # a new connection carries it in place of the job (below)
        assert not poll(cancel, link, 100.0)


def test_a_new_connection_carries_the_cancel_instead_of_the_job_until_it_runs() -> None:
    job = ClientJob(p.JobSpec([b"x"], {}, b"/", stdin=False), Recorder(), "j", proto=p)
    session = Session("ipc:///nonexistent/s", proto=p)
    session.add(job)
    assert [type(m) for m in session.conn.on_connect()] == [p.Submit]
    job.cancelled_by = SIGTERM
    assert session.conn.on_connect() == [p.Signal("j", SIGTERM)]
    job.handle(p.Started("j", 1, 5, "w", "h"))  # it had started: resubmitted as running, to be re-attached
    restored = session.conn.on_connect()
    assert [(type(m), m.running, m.attempt) for m in restored] == [(p.Submit, True, 1)]
    job.handle(p.Requeued("j", 1, "worker lost"))
    assert session.conn.on_connect() == [p.Signal("j", SIGTERM)]


class FakeTransport:
    """Frames out are kept; frames in are what the test queues."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def receive(self, now: float) -> list[bytes]:
        frames, self.inbox = self.inbox, []
        return frames

    def close(self, wait: float) -> None: ...


def test_the_connection_says_when_the_latest_ping_the_server_answered_was_sent() -> None:
    """Pongs answer pings in order: an answer says the server read what went before its ping
    (not any message heard after it, which the server may have sent before)."""
    transports: list[FakeTransport] = []

    def connect(endpoint: str, max_message: int) -> FakeTransport:
        transports.append(FakeTransport())
        return transports[-1]

    conn = Connection("ipc:///nonexistent/s", None, p.decode_to_client, proto=p,
                      transport=connect)  # type: ignore[arg-type]
    conn.open(1.0)
    conn.ping()
    conn.send(p.Signal("j", SIGTERM))
    conn.ping()
    first, second = conn._pings
    assert first < second and conn.answered_at == 0.0
    transports[-1].inbox = [p.encode(p.Output("j", 1, 1, 0, b"x"))]
    assert [type(m) for m in conn.receive(2.0)] == [p.Output] and conn.answered_at == 0.0
    transports[-1].inbox = [p.encode(p.Pong())]
    conn.receive(2.1)
    assert conn.answered_at == first  # the signal is not known to be read yet
    transports[-1].inbox = [p.encode(p.Pong())]
    conn.receive(2.2)
    assert conn.answered_at == second
    conn.open(3.0)  # a new connection: nothing answered on it yet
    assert conn.answered_at == 0.0 and conn.generation == 2


def test_a_job_seen_starting_after_the_cancel_is_signalled_and_the_server_confirms() -> None:
    cancel, link = CancelledJob(1.0), Link()
    assert poll(cancel, link, 5.0)
    link.say(running=True, attempt=1)  # its Started crossed the cancel
    assert poll(cancel, link, 5.1)
    link.answered = 5.15  # the ping after the signal is answered, on its connection: the server has it
    assert not poll(cancel, link, 5.2)
    link.drop()
    link.back(6.0)
    link.say(running=True)  # re-attached after a restart: the job had its signal already
    assert not poll(cancel, link, 6.1)


def test_a_signal_lost_with_its_connection_waits_until_the_server_re_attaches_the_job() -> None:
    cancel, link = CancelledJob(1.0), Link()
    link.say(running=True, attempt=1)
    assert poll(cancel, link, 5.0)  # cancelled while the server was assigning it
    link.drop()
    assert not poll(cancel, link, 5.1)
    link.back(8.0)  # a restarted server: the job is re-submitted as running; its worker is not back
    for now in (8.0, 20.0, 60.0):
        assert not poll(cancel, link, now)
    link.say(running=True)  # Started (resumed): re-attached on this connection
    assert poll(cancel, link, 61.0)
    assert not poll(cancel, link, 61.1)


def test_a_frozen_server_gets_the_signal_on_its_connection_when_it_runs_again() -> None:
    cancel, link = CancelledJob(1.0), Link()
    link.say(running=True, attempt=1)
    assert poll(cancel, link, 5.0)
    assert not poll(cancel, link, 7.0)  # unanswered: held, not sent again on the same connection
    link.answered = 5.01  # it runs again and answers the ping sent after the signal
    assert not poll(cancel, link, 30.0)
    assert cancel.gate is not None and cancel.gate.signum is None


def test_a_job_not_re_attached_on_this_connection_holds_its_signal() -> None:
    cancel, link = CancelledJob(1.0), Link()
    link.say(running=True, attempt=1)
    link.back(5.0)  # its Started came on the previous connection
    assert not poll(cancel, link, 5.0)
    link.say(running=True)
    assert poll(cancel, link, 5.5)


def test_a_job_requeued_after_its_signal_is_withdrawn_again() -> None:
    cancel, link = CancelledJob(1.0), Link()
    link.say(running=True, attempt=1)
    assert poll(cancel, link, 5.0)
    link.say(running=False)  # its worker was lost: the server queues it again
    assert poll(cancel, link, 5.1)  # the cancel, so the server drops it
    assert not poll(cancel, link, 5.2)
    link.say(running=True, attempt=2)  # it was assigned again before the server read the cancel
    assert poll(cancel, link, 5.3)


def test_a_new_run_gets_its_own_signal_also_when_its_requeue_went_unseen() -> None:
    """Requeued and started again, or started and requeued, in one round: the signal
    went to the lost run."""
    cancel, link = CancelledJob(1.0), Link()
    link.say(running=True, attempt=1)
    assert poll(cancel, link, 5.0)
    link.answered = 5.01
    assert not poll(cancel, link, 5.1)
    link.say(running=False)
    link.say(running=True, attempt=2)
    assert poll(cancel, link, 5.2)

    cancel, link = CancelledJob(1.0), Link()
    assert poll(cancel, link, 5.0)  # withdrawn
    link.say(running=True, attempt=1)  # it had started; our cancel went to that run, which was lost
    link.say(running=False)
    assert poll(cancel, link, 5.1)  # so the cancel again: the server queued the job again
    assert not poll(cancel, link, 5.2)


events = st.lists(st.tuples(st.one_of(
    st.tuples(st.sampled_from(["drop", "back", "pong", "start", "requeue", "resumed"]), st.just(0.0)),
    st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
), st.booleans()), max_size=40)


@settings(max_examples=500, deadline=None)
@given(st.booleans(), st.booleans(), events)
def test_the_server_always_learns_of_the_cancel(up: bool, running: bool,
                                                script: list[tuple[tuple[str, float], bool]]) -> None:
    """A model server, assumed to forget everything with each connection (a restart):
    whenever the link is up and the server has said where the job stands on it (or the
    job has not started), the server has the cancel for the job as it stands (or the
    running job got its signal); a running job's signal goes out only on a connection
    that re-attached it.  The executor decides after some events only (one round of its
    loop may see news on one connection and then a new one)."""
    cancel, link, now = CancelledJob(1.0), Link(up), 0.0
    if running:  # its Started crossed the cancel, on the current connection
        link.say(running=True, attempt=1)
    told = delivered = False  # the server has the cancel; the job got its signal
    sent: tuple[int, float] | None = None  # a signal to the running job, on that connection at that time
    for (kind, wait), decide in [(("wait", 0.0), True), *script, (("wait", 0.0), True)]:
        now += 0.01 + wait
        if kind == "drop":
            link.drop()
            told = False
        elif kind == "back":
            link.back(now)
            told = not link.running  # the restore: the cancel in place of the job, or the job as running
        elif not link.up:
            pass  # nothing comes from the server while it is gone
        elif kind == "pong":  # the server answers the ping sent latest (just now)
            link.answered = now
            if sent is not None and sent[0] == link.generation and now > sent[1]:
                delivered = True
        elif kind in ("start", "requeue") and link.running == (kind == "requeue"):
            link.say(running=kind == "start", attempt=link.attempt + (kind == "start"))
            told = delivered = False
            sent = None
        elif kind == "resumed" and link.running:
            link.say(running=True)
        if not decide:
            continue
        if poll(cancel, link, now):
            assert not link.running or (link.up and link.attached), "a signal to a job not attached here"
            if link.up:
                told = True
                sent = (link.generation, now) if link.running else None
        if link.up and (not link.running or link.attached):
            assert told or delivered, "the server may run the job without its cancel"
