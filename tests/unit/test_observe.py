"""The dashboard's view of the broker (jobqueue.observe), driven without sockets or clocks:
subscriptions push batched changes, the history and the series are bounded, the
output tail is bounded and skips chunks for a slow watcher."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobqueue import observe
from jobqueue import protocol as p
from jobqueue.broker import Broker
from jobqueue.observe import Observer

WALL = 1_800_000_000.0  # what the broker's clock 0 is on the wall


class Watched:
    """A broker with an observer, peers speaking to it, and its events fed as the server does."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.broker = Broker(now, heartbeat=1.0, liveness=5, restart_hold=0.0, wall_clock_ns=int(WALL * 1e9))
        self.observer = Observer(self.broker, now, wall_offset=WALL)
        self.outbox: list[tuple[bytes, Any]] = []

    def _take(self, sends: list[Any]) -> list[tuple[bytes, Any]]:
        self.observer.observe(self.broker.events, self.now)
        self.broker.events.clear()
        out = [(s.peer, _decode(s.message)) for s in sends]
        self.outbox += out
        return out

    def send(self, peer: bytes, msg: p.Message) -> list[tuple[bytes, Any]]:
        return self._take(self.broker.receive(peer, p.encode(msg), self.now))

    def advance(self, seconds: float) -> list[tuple[bytes, Any]]:
        self.now += seconds
        return self._take(self.broker.tick(self.now))

    def client(self, peer: bytes) -> None:
        self.send(peer, p.ClientHello(p.PROTOCOL_VERSION, peer.decode(), peer.decode()))

    def worker(self, peer: bytes, slots: int = 1, tags: list[str] | None = None) -> None:
        self.send(peer, p.WorkerHello(p.PROTOCOL_VERSION, peer.decode(), peer.decode(), "h", 1, "0", slots,
                                      tags or []))

    def submit(self, client: bytes, job_id: str, argv: list[str] | None = None, **spec: Any) -> None:
        args = [a.encode() for a in argv or ["true"]]
        self.send(client, p.Submit(job_id, p.JobSpec(args, {b"SECRET": b"hunter2"}, b"/tmp", **spec)))

    def run(self, worker: bytes, job_id: str, status: int = 0, attempt: int = 1) -> None:
        self.send(worker, p.Started(job_id, attempt, 7))
        self.send(worker, p.Finished(job_id, attempt, status, "exited"))

    def to(self, peer: bytes, kind: type) -> list[Any]:
        return [m for target, m in self.outbox if target == peer and isinstance(m, kind)]

    def watcher(self, peer: bytes = b"dash") -> None:
        self.client(peer)
        self.send(peer, p.Watch())


def _decode(message: Any) -> Any:
    if isinstance(message, p.AssignRaw):
        return p.decode_to_worker(p.encode(message))
    data = p.encode(message) if isinstance(message, p.Message) else bytes(message)
    for decode in (p.decode_to_watcher, p.decode_to_client, p.decode_to_worker):
        try:
            return decode(data)
        except p.ProtocolError:
            pass
    raise AssertionError("undecodable")


@pytest.fixture
def w() -> Watched:
    return Watched()


def test_watch_gets_whole_state_then_only_batched_changes(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.submit(b"c1", "run1", ["sleep", "9"])
    w.submit(b"c1", "wait1", ["make"], tags=["gpu"])
    w.watcher()
    (state,) = w.to(b"dash", p.WatchState)
    assert state.last and [wk.name for wk in state.workers] == ["w1"] and state.workers[0].state == "busy"
    jobs = {j.job_id: j for j in state.jobs}
    assert jobs["run1"].state == "running" and jobs["run1"].worker == "w1" and jobs["run1"].argv == ["sleep", "9"]
    assert jobs["wait1"].state == "queued" and "no connected worker has tags gpu" in jobs["wait1"].why
    assert jobs["wait1"].queued == pytest.approx(WALL + 100)
    # many changes within one push interval go out as one Changes message
    for i in range(20):
        w.submit(b"c1", f"more{i}")
    w.run(b"w1", "run1")
    assert w.to(b"dash", p.Changes) == []
    w.advance(observe.PUSH_EVERY)
    (changes,) = w.to(b"dash", p.Changes)
    assert [(wk.name, wk.state, wk.jobs) for wk in changes.workers] == [("w1", "busy", ["more0"])]
    assert "run1" in changes.gone and {j.job_id for j in changes.jobs} >= {f"more{i}" for i in range(19)}
    assert [o.job_id for o in changes.finished] == ["run1"] and changes.finished[0].outcome == "succeeded"
    assert changes.finished[0].started > 0 and changes.finished[0].ended >= changes.finished[0].started
    # nothing changed: nothing pushed
    w.advance(observe.PUSH_EVERY)
    w.advance(observe.PUSH_EVERY)
    assert len(w.to(b"dash", p.Changes)) == 1


def test_no_watcher_no_dirty_tracking_and_a_gone_watcher_stops_getting_pushes(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.submit(b"c1", "j1")
    assert not w.observer._dirty_jobs and not w.observer._dirty_workers
    w.watcher()
    w.submit(b"c1", "j2")
    w.send(b"dash", p.Bye())
    assert not w.observer.watchers and not w.observer._dirty_jobs
    w.advance(1.0)
    assert w.to(b"dash", p.Changes) == []


def test_history_is_bounded_and_keeps_outcomes(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    for i in range(observe.HISTORY + 5):
        w.submit(b"c1", f"j{i}")
        w.run(b"w1", f"j{i}", status=i % 2)
        w.send(b"c1", p.Release(f"j{i}", 1))
    history = w.observer.history
    assert len(history) == observe.HISTORY and history[0].job_id == "j5"
    assert {e.view().outcome for e in history} == {"succeeded", "nonzero"}
    w.submit(b"c1", "blocked", tags=["none"])
    w.advance(3.0)
    w.send(b"c1", p.Signal("blocked", 15))
    last = history[-1].view()
    assert (last.job_id, last.outcome, last.status, last.started) == ("blocked", "cancelled", 143, 0.0)
    assert last.ended - last.queued == pytest.approx(3.0)


def test_series_points_per_interval_with_waits_and_outcomes(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.submit(b"c1", "a")
    w.advance(2.0)
    w.run(b"w1", "a", status=0)
    w.submit(b"c1", "b")
    w.advance(1.0)
    w.send(b"w1", p.Started("b", 1, 7))
    w.worker(b"w2")
    w.client(b"c2")
    w.submit(b"c2", "c")
    w.send(b"w2", p.Goodbye("bye"))  # c is requeued
    w.send(b"w1", p.Finished("b", 1, 3, "exited"))
    w.advance(observe.INTERVAL)
    point = w.observer.series[-1]
    assert point.finished == {"succeeded": 1, "nonzero": 1, "requeued": 1}
    assert point.running == 2 and point.queued >= 1
    assert 0 <= point.wait_p50 <= point.wait_p95 <= 2.0 + 1e-6
    assert point.start == pytest.approx(WALL + 100.0)
    # an hour of intervals at most
    w.advance(observe.INTERVAL * (observe.POINTS + 10))
    assert len(w.observer.series) <= observe.POINTS


def test_worker_lost_is_pushed_as_lost_with_its_job_requeued(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.submit(b"c1", "j1")
    w.watcher()
    for _ in range(10):  # everyone but w1 keeps talking
        w.now += 0.6
        w.send(b"c1", p.Ping())
        w.send(b"dash", p.Ping())
        w.advance(0)
    changes = w.to(b"dash", p.Changes)
    lost = [wk for c in changes for wk in c.workers if wk.name == "w1"]
    assert lost and lost[-1].state == "lost" and lost[-1].jobs == ["j1"]
    jobs = [j for c in changes for j in c.jobs if j.job_id == "j1"]
    assert jobs[-1].state == "requeued" and jobs[-1].attempt == 1


def _out(w: Watched, job_id: str, fd: int, offset: int, data: bytes, attempt: int = 1) -> None:
    w.send(b"w1", p.Output(job_id, attempt, fd, offset, data))


def test_tail_sends_kept_output_then_live_chunks_then_end(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.watcher()
    w.submit(b"c1", "j1", ["sh", "-c", "x"], timeout=5.0)
    w.advance(2.0)
    w.send(b"w1", p.Started("j1", 1, 7))
    big = bytes(range(256)) * 400  # 100 KiB: only the last 64 KiB are kept
    _out(w, "j1", 1, 0, big)
    _out(w, "j1", 2, 0, b"oops\n")
    w.send(b"dash", p.Tail("j1"))
    (detail,) = w.to(b"dash", p.JobDetail)
    assert detail.known and detail.argv == ["sh", "-c", "x"] and detail.cwd == "/tmp" and detail.timeout == 5.0
    assert detail.env_names == ["SECRET"] and "hunter2" not in repr(detail)
    assert [(e.what, e.at) for e in detail.timeline] == [("queued", WALL + 100), ("started", WALL + 102)]
    assert [e.detail for e in detail.timeline] == ["", "on worker w1, attempt 1, after waiting 2s"]
    assert detail.output
    kept = w.to(b"dash", p.Output)
    assert sum(len(o.data) for o in kept) == observe.TAIL_KEEP
    assert kept[0].offset == len(big) - (observe.TAIL_KEEP - 5) and kept[-1].data == b"oops\n"
    _out(w, "j1", 1, len(big), b"live\n")
    assert w.to(b"dash", p.Output)[-1].data == b"live\n"
    assert w.to(b"c1", p.Output)[-1].data == b"live\n"  # the job's client still gets everything
    w.send(b"w1", p.Finished("j1", 1, 0, "exited"))
    assert w.to(b"dash", p.TailEnd) == [p.TailEnd("j1")]
    # a finished job: its detail, its kept output, and the end at once
    w.send(b"dash", p.Tail("j1"))
    details = w.to(b"dash", p.JobDetail)
    assert details[-1].outcome.status == 0
    assert [e.what for e in details[-1].timeline] == ["queued", "started", "finished"]
    assert details[-1].timeline[-1].detail == "exit code 0"
    assert w.to(b"dash", p.Output)[-1].data == b"live\n"
    w.send(b"dash", p.Tail("nosuch"))
    assert w.to(b"dash", p.JobDetail)[-1] == p.JobDetail("nosuch", False)


def test_slow_tail_watcher_misses_chunks_but_the_client_gets_all(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.watcher()
    w.submit(b"c1", "j1")
    w.send(b"w1", p.Started("j1", 1, 7))
    w.send(b"dash", p.Tail("j1"))
    chunk = b"x" * 65536
    for i in range(10):
        _out(w, "j1", 1, i * len(chunk), chunk)
    relayed = w.to(b"dash", p.Output)
    assert len(relayed) == observe.TAIL_WINDOW // len(chunk)  # then it stopped: nothing acknowledged
    assert len(w.to(b"c1", p.Output)) == 10
    w.send(b"dash", p.TailAck("j1", 1, 1, 4 * len(chunk)))  # caught up: chunks flow again, with a gap
    _out(w, "j1", 1, 10 * len(chunk), b"later")
    last = w.to(b"dash", p.Output)[-1]
    assert last.data == b"later" and last.offset == 10 * len(chunk)
    w.send(b"dash", p.Tail("j1", follow=False))
    _out(w, "j1", 1, 10 * len(chunk) + 5, b"more")
    assert w.to(b"dash", p.Output)[-1].data == b"later"


def test_output_is_not_copied_without_a_watcher(w: Watched) -> None:
    w.worker(b"w1")
    w.client(b"c1")
    w.submit(b"c1", "j1")
    w.send(b"w1", p.Started("j1", 1, 7))
    _out(w, "j1", 1, 0, b"hello")
    assert w.observer._rings == {}


def test_snapshot_is_paged_under_the_message_limit(w: Watched) -> None:
    w.client(b"c1")
    for i in range(1200):
        w.submit(b"c1", f"j{i}", ["x" * 5000], tags=["never"])
    w.watcher()
    pages = w.to(b"dash", p.WatchState)
    assert len(pages) == 3 and [pg.last for pg in pages] == [False, False, True]
    assert sum(len(pg.jobs) for pg in pages) == 1200
    assert all(len(p.encode(pg)) < p.MAX_MESSAGE_SIZE for pg in pages)
    assert pages[0].jobs[0].argv[0].endswith("…")


# --- hostile or random input with a watcher connected ------------------------------------------

job_ids = st.sampled_from(["j1", "j2", "nosuch", ""])
operations = st.lists(st.one_of(
    st.builds(lambda j: (b"dash", p.Tail(j)), job_ids),
    st.builds(lambda j: (b"dash", p.Tail(j, follow=False)), job_ids),
    st.builds(lambda j, a, fd, off: (b"dash", p.TailAck(j, a, fd, off)), job_ids, st.integers(-1, 3),
              st.integers(-1, 3), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda: (b"dash", p.Watch())),
    st.builds(lambda fd, n: (b"w1", p.Output("j1", 1, fd, 0, b"x" * n)), st.integers(0, 3), st.integers(0, 70_000)),
    st.builds(lambda: (b"w1", p.Finished("j1", 1, 0, "exited"))),
    st.builds(lambda: (b"c1", p.Signal("j2", 15))),
    st.builds(lambda: (b"dash", p.Bye())),
    st.builds(lambda: (b"tick", None)),
), max_size=25)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
          deadline=None)
@given(ops=operations)
def test_random_watching_never_breaks_the_broker_and_tails_stay_bounded(ops: list[tuple[bytes, Any]]) -> None:
    w = Watched()
    w.worker(b"w1")
    w.client(b"c1")
    w.watcher()
    w.submit(b"c1", "j1")
    w.send(b"w1", p.Started("j1", 1, 7))
    w.submit(b"c1", "j2", tags=["none"])
    offsets: dict[int, int] = {1: 0, 2: 0}
    for peer, msg in ops:
        if peer == b"tick":
            w.advance(observe.PUSH_EVERY)
            continue
        if isinstance(msg, p.Output) and msg.fd in offsets:  # a worker's offsets only grow
            msg = p.Output("j1", 1, msg.fd, offsets[msg.fd], msg.data)
            offsets[msg.fd] += len(msg.data)
        w.send(peer, msg)
    observer = w.observer
    assert all(sub.outstanding <= observe.TAIL_WINDOW for subs in observer._tails.values() for sub in subs.values())
    assert all(ring.size <= observe.TAIL_KEEP for ring in observer._rings.values())
    assert observer._rings_size == sum(ring.size for ring in observer._rings.values())
    relayed = sum(len(m.data) for m in w.to(b"c1", p.Output))
    assert relayed == sum(offsets.values())  # the job's client got every byte, watched or not


def test_a_waiting_jobs_reason_carries_what_the_shell_adds(w: Watched) -> None:
    """The server's autoscaler explains its part too (as ``jobqueue status`` shows)."""
    seen: list[str] = []

    def autoscaler(job: Any, now: float) -> str:
        seen.append(job.job_id)
        return f"2 spawned worker(s) starting, the oldest for {now - 100:.0f}s"

    w.observer.why_more = autoscaler
    w.client(b"c1")
    w.submit(b"c1", "wait1", ["make"])
    w.advance(3)
    w.watcher()
    (state,) = w.to(b"dash", p.WatchState)
    (job,) = state.jobs
    assert job.why == "no worker is connected; 2 spawned worker(s) starting, the oldest for 3s"
    assert seen == ["wait1"]
