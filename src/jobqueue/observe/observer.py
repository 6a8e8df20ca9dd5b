"""What a dashboard watches, kept beside the broker: pure code, no clock, no I/O.

- **History**: the last :data:`HISTORY` finished jobs (their outcome, times, worker).
- **Series**: per :data:`INTERVAL` figures over the last hour: most jobs waiting and
  running, jobs ended by outcome (and requeued), queue wait median and 95th percentile.
- **Watchers**: clients that sent :class:`~jobqueue.protocol.Watch`.  They get the whole
  state once (:class:`~jobqueue.protocol.WatchState` pages), then what changed, batched,
  at most every :data:`PUSH_EVERY` seconds (:class:`~jobqueue.protocol.Changes`): never
  a poll of the whole state.
- **Tails**: while someone watches, the last :data:`TAIL_KEEP` bytes of each running
  job's output are copied from the chunks the broker relays anyway; a tail watcher gets
  them, then every new chunk (the very frame the job's client gets).  A watcher with
  :data:`TAIL_WINDOW` bytes unacknowledged misses chunks (it sees the gap in the
  offsets): the job and the broker never wait for a dashboard.

Fed through a narrow interface: the broker's hooks (:meth:`Observer.job_moved`,
:meth:`worker_changed`, :meth:`worker_gone`, :meth:`peer_gone`, :meth:`output`,
:meth:`tick`), its typed events (:meth:`observe`, called by the server's shell with the
events it logs), and the handlers of Watch, Tail and TailAck it registers with the
broker.  Nothing costs more than a few dictionary operations per job unless a dashboard
is connected.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import events as ev
from .. import protocol as p
from ..broker import Worker
from ..jobstate import TERMINAL, WAITING, JobState
from .records import (
    DEPARTED,
    ENDED_TAILS_TOTAL,
    HISTORY,
    INTERVAL,
    POINTS,
    PUSH_EVERY,
    RINGS_TOTAL,
    Ended,
    Interval,
    Ring,
    Run,
    Step,
    TailSub,
    argv_of,
    bin_payload,
    pages,
    timeline,
)

if TYPE_CHECKING:
    from ..broker import Broker, Client, Frame, Job, Peer


class Observer:
    def __init__(self, broker: Broker, now: float, wall_offset: float) -> None:
        """``wall_offset``: what to add to the broker's clock to get wall-clock seconds."""
        self.broker = broker
        self.wall_offset = wall_offset
        self._now = now
        self.history: deque[Ended] = deque(maxlen=HISTORY)
        self.series: deque[p.SeriesPoint] = deque(maxlen=POINTS)
        self._interval = Interval(now, 0, 0)
        self._queued = 0
        self._running = 0
        #: Jobs that have started (a few per slot): when they were first queued, when their
        #: latest attempt started, and what happened to them.  A job that never ran has none.
        self._runs: dict[str, Run] = {}
        #: Ended jobs waiting for the event that tells their status (same round).
        self._ending: dict[str, Ended] = {}
        self._departed: deque[p.WatchedWorker] = deque(maxlen=DEPARTED)
        # What the watchers get; kept only while there are watchers.
        self.watchers: dict[Client, None] = {}
        self._dirty_jobs: dict[str, None] = {}
        self._dirty_workers: dict[Worker, None] = {}
        self._gone_workers: list[p.WatchedWorker] = []
        self._new_ended: list[Ended] = []
        self._new_points: list[p.SeriesPoint] = []
        self._next_push = now
        self._worker_states: dict[str, tuple[str, float]] = {}
        # Output.
        self._rings: dict[str, Ring] = {}
        self._rings_size = 0
        self._ended_tails: OrderedDict[str, Ring] = OrderedDict()
        self._ended_tails_size = 0
        self._tails: dict[str, dict[Client, TailSub]] = {}
        #: What else explains a waiting job (the server's autoscaler: ``jobqueue status`` says it too).
        self.why_more: Callable[[Job, float], str] | None = None
        self._event_handlers: dict[type, Callable[[Any], None]] = {
            ev.JobStarted: self._on_started, ev.JobRequeued: self._on_requeued,
            ev.JobFinished: self._on_ended, ev.JobCancelled: self._on_ended, ev.JobLost: self._on_ended,
        }
        broker.watch(self, {p.Watch: self._on_watch, p.Tail: self._on_tail, p.TailAck: self._on_tail_ack})

    def wall(self, t: float) -> float:
        return round(t + self.wall_offset, 3)

    # --- hooks called by the broker ------------------------------------------------------

    def job_moved(self, job: Job, old: JobState | None, now: float) -> None:
        """``job`` went from ``old`` to ``job.state`` (the broker's single writer calls this;
        ``job.since`` is still when it entered ``old``)."""
        self._now = now
        new = job.state
        interval = self._interval
        self._queued += (new in WAITING) - (old in WAITING)
        if self._queued > interval.queued:
            interval.queued = self._queued
        if new is _RUNNING:  # its worker and attempt are set just after: see the JobStarted event
            if old is not _RUNNING:
                self._running += 1
                if self._running > interval.running:
                    interval.running = self._running
            run = self._runs.get(job.job_id)
            if run is None:  # first start: it waited job.waited since it was queued
                run = self._runs[job.job_id] = Run(self.wall(now - job.waited) if old is not None else 0.0)
            run.started = now
        else:
            if old is _RUNNING:
                self._running -= 1
            if new in TERMINAL and old not in TERMINAL:
                self._ended(job, now)
        if self.watchers:
            self._dirty_jobs[job.job_id] = None

    def worker_changed(self, worker: Worker) -> None:
        """Its slots, jobs or draining changed (or it joined)."""
        if self.watchers:
            self._dirty_workers[worker] = None

    def worker_gone(self, worker: Worker, lost: bool, now: float) -> None:
        view = self._worker_view(worker, "lost" if lost else "left", now)
        self._departed.append(view)
        self._dirty_workers.pop(worker, None)
        self._worker_states.pop(worker.session, None)
        if self.watchers:
            self._gone_workers.append(view)

    def peer_gone(self, peer: Peer) -> None:
        """A peer's session ended: a watcher among them stops watching."""
        if peer not in self.watchers:
            return
        del self.watchers[peer]
        for job_id in [j for j, subs in self._tails.items() if peer in subs]:
            self._untail(job_id, peer)
        if not self.watchers:
            self._dirty_jobs.clear()
            self._dirty_workers.clear()
            self._gone_workers.clear()
            self._new_ended.clear()
            self._new_points.clear()
            self._rings.clear()
            self._rings_size = 0

    def output(self, job: Job, msg: p.RelayedOutput, frame: Frame) -> None:
        """A chunk of ``job``'s output the broker relays (``frame``: as it came)."""
        if not self.watchers:
            return
        data = bin_payload(msg.data)
        subs = self._tails.get(job.job_id)
        ring = self._rings.get(job.job_id)
        if ring is None or ring.attempt != msg.attempt:
            if ring is not None:
                self._rings_size -= ring.size
            ring = self._rings[job.job_id] = Ring(msg.attempt)
        if subs or self._rings_size < RINGS_TOTAL:
            self._rings_size += ring.add(msg.fd, msg.offset, data)
        if subs:
            end = msg.offset + len(data)
            for client, sub in subs.items():
                if sub.admit(msg.attempt, msg.fd, end, len(data)):
                    self.broker._send(client.identity, frame)

    def tick(self, now: float) -> None:
        """Close the intervals that ended; push the changes when due."""
        self._now = now
        while now >= self._interval.start + INTERVAL:
            self._close_interval(now)
        if self.watchers and now >= self._next_push and self._has_changes():
            self._next_push = now + PUSH_EVERY
            self._push(now)

    def next_deadline(self) -> float:
        due = self._interval.start + INTERVAL
        if self.watchers and self._has_changes():
            due = min(due, self._next_push)
        return due

    # --- events ------------------------------------------------------------------------

    def observe(self, events: Iterable[ev.Event], now: float) -> None:
        """The broker's events of the round (outcomes, waits, requeues)."""
        self._now = now
        handlers = self._event_handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        if self._ending:  # cannot happen: every end has its event
            for ending in self._ending.values():
                ending.outcome = ending.reason = "unknown"
                self._record(ending)
            self._ending.clear()

    def _on_started(self, event: ev.JobStarted) -> None:
        self._interval.wait(event.waited)
        self._step(event.job, "started", "on worker {}, attempt {}, after waiting {:g}s",
                   event.worker, event.attempt, event.waited)

    def _on_requeued(self, event: ev.JobRequeued) -> None:
        self._count("requeued")
        self._step(event.job, "requeued", "{}", event.why)

    def _on_ended(self, event: ev.JobFinished | ev.JobCancelled | ev.JobLost) -> None:
        ending = self._ending.pop(event.job, None)
        if ending is not None:
            self._settle(ending, event)

    # --- internals: ends, series ------------------------------------------------------------------

    def _ended(self, job: Job, now: float) -> None:
        run = self._runs.pop(job.job_id, None)
        if run is None:  # it never ran: it waited since job.since
            run = Run(self.wall(job.since))
        ended = Ended(job.job_id, job.raw_spec, job.tags, job.worker.name if job.worker else "", job.attempt,
                       run.queued, self.wall(run.started) if run.started is not None else 0.0, self.wall(now),
                       run.steps)
        self._ending[job.job_id] = ended
        if self._rings:
            ring = self._rings.pop(job.job_id, None)
            if ring is not None:
                self._rings_size -= ring.size
                if ring.size:
                    self._keep_ended_tail(job.job_id, ring)
        if self._tails:
            for client in self._tails.pop(job.job_id, None) or ():
                self.broker._send(client.identity, p.TailEnd(job.job_id))

    def _settle(self, ending: Ended, event: ev.JobFinished | ev.JobCancelled | ev.JobLost) -> None:
        step: Step
        if isinstance(event, ev.JobFinished):
            ending.status, ending.reason, ending.outcome = event.status, event.reason, event.outcome
            step = ((ending.ended, "finished", "exit code {}", (event.status,)) if event.reason == "exited"
                    else (ending.ended, "finished", "{}, status {}", (event.reason, event.status)))
        elif isinstance(event, ev.JobCancelled):
            ending.status, ending.reason, ending.outcome = 128 + event.signal, "cancelled", "cancelled"
            step = (ending.ended, "cancelled", "signal {} while queued", (event.signal,))
        else:
            ending.status, ending.reason, ending.outcome = 255, "lost", "lost"
            step = (ending.ended, "lost", "{}", (event.why,))
        ending.steps.append(step)
        self._record(ending)

    def _record(self, ending: Ended) -> None:
        self.history.append(ending)
        self._count(ending.outcome)
        if self.watchers:
            self._new_ended.append(ending)

    def _count(self, outcome: str) -> None:
        finished = self._interval.finished
        finished[outcome] = finished.get(outcome, 0) + 1

    def _step(self, job_id: str, what: str, template: str, *args: Any) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.steps.append((self.wall(self._now), what, template, args))

    def _close_interval(self, now: float) -> None:
        point = self._interval.point(self.wall_offset)
        self.series.append(point)
        if self.watchers:
            self._new_points.append(point)
        start = self._interval.start + INTERVAL
        if now - start > INTERVAL * POINTS:  # a long silence (a suspended machine): start afresh
            start = now
        self._interval = Interval(start, self._queued, self._running)

    def _keep_ended_tail(self, job_id: str, ring: Ring) -> None:
        self._ended_tails[job_id] = ring
        self._ended_tails_size += ring.size
        while self._ended_tails_size > ENDED_TAILS_TOTAL:
            _, old = self._ended_tails.popitem(last=False)
            self._ended_tails_size -= old.size

    # --- watching ----------------------------------------------------------------------

    def _on_watch(self, client: Client, msg: p.Watch, now: float) -> None:
        self.watchers[client] = None
        self._next_push = now + PUSH_EVERY
        why: dict[frozenset[str], str] = {}
        workers = [self._worker_view(w, None, now) for w in self._workers()] + list(self._departed)
        jobs = [self._job_view(job, why) for job in self.broker.jobs.values() if _live(job)]
        jobs.sort(key=lambda j: (-j.priority, j.queued))
        history = [e.view() for e in self.history]
        paged = list(pages(workers, jobs, history))
        for i, (w, j, h) in enumerate(paged):
            self.broker._send(client.identity, p.WatchState(
                self.broker.server_id, self.broker.software, self.wall(now), INTERVAL, w, j, h,
                list(self.series) if i == 0 else [], i == len(paged) - 1))

    def _has_changes(self) -> bool:
        return bool(self._dirty_jobs or self._dirty_workers or self._gone_workers or self._new_ended
                    or self._new_points)

    def _push(self, now: float) -> None:
        why: dict[frozenset[str], str] = {}
        jobs: list[p.WatchedJob] = []
        gone: list[str] = []
        for job_id in self._dirty_jobs:
            job = self.broker.jobs.get(job_id)
            if job is not None and _live(job):
                jobs.append(self._job_view(job, why))
                if job.worker is not None:  # assigned: its worker runs one more job
                    self._dirty_workers[job.worker] = None
            else:
                gone.append(job_id)
        workers = [self._worker_view(w, None, now) for w in self._dirty_workers
                   if w.identity in self.broker.peers] + self._gone_workers
        finished = [e.view() for e in self._new_ended]
        series = self._new_points
        self._dirty_jobs, self._dirty_workers, self._gone_workers, self._new_ended, self._new_points = \
            {}, {}, [], [], []
        frames: list[bytes] = []
        for w, j, f in pages(workers, jobs, finished):
            first = not frames
            frames.append(p.encode(p.Changes(self.wall(now), w, j, gone if first else [], f,
                                             series if first else [])))
        for client in self.watchers:
            for frame in frames:
                self.broker._send(client.identity, frame)

    def _workers(self) -> Iterator[Worker]:
        return (w for w in self.broker.peers.values() if isinstance(w, Worker))

    def _worker_view(self, worker: Worker, gone: str | None, now: float) -> p.WatchedWorker:
        state = gone or ("draining" if worker.draining else "busy" if worker.running else "idle")
        known = self._worker_states.get(worker.session)
        if known is None or known[0] != state:
            known = self._worker_states[worker.session] = (state, self.wall(now))
        return p.WatchedWorker(worker.session, worker.name, worker.host, state, worker.slots, sorted(worker.tags),
                               list(worker.running), self.wall(worker.since), worker.software, worker.pid,
                               known[1])

    def _queued_at(self, job: Job) -> float:
        """When it was first queued (0: unknown, after a server restart)."""
        run = self._runs.get(job.job_id)
        return run.queued if run is not None else self.wall(job.since)

    def _job_view(self, job: Job, why: dict[frozenset[str], str]) -> p.WatchedJob:
        reason = ""
        if job.state in WAITING:
            key = job.tag_key
            reason = why.get(key) or why.setdefault(key, self._why_waiting(job))
        state = job.state.value if job.state else "new"
        return p.WatchedJob(job.job_id, argv_of(job.raw_spec), state, job.worker.name if job.worker else "",
                            job.tags, job.priority, job.attempt, self._queued_at(job), self.wall(job.since),
                            reason)

    def _why_waiting(self, job: Job) -> str:
        reason = self.broker._why_waiting(job)
        more = self.why_more(job, self._now) if reason and self.why_more is not None else ""
        return f"{reason}; {more}" if more else reason

    # --- tails -------------------------------------------------------------------------

    def _on_tail(self, client: Client, msg: p.Tail, now: float) -> None:
        if not msg.follow:
            self._untail(msg.job_id, client)
            return
        job = self.broker.jobs.get(msg.job_id)
        send = self.broker._send
        if job is not None and _live(job):
            ring = self._rings.get(job.job_id)
            if ring is not None and ring.attempt != job.attempt:
                ring = None
            send(client.identity, self._detail(job, ring is not None))
            sub = self._tails.setdefault(job.job_id, {})[client] = TailSub(job.attempt)
            for fd, offset, data in ring.chunks if ring else ():
                sub.admit(ring.attempt, fd, offset + len(data), len(data))  # type: ignore[union-attr]
                send(client.identity, p.Output(job.job_id, job.attempt, fd, offset, data))
            return
        ended = next((e for e in reversed(self.history) if e.job_id == msg.job_id), None)
        kept = self._ended_tails.get(msg.job_id)
        if ended is None:
            send(client.identity, p.JobDetail(msg.job_id, False))
        else:
            send(client.identity, self._ended_detail(ended, kept is not None))
            for fd, offset, data in kept.chunks if kept else ():
                send(client.identity, p.Output(ended.job_id, kept.attempt, fd, offset, data))  # type: ignore[union-attr]
        send(client.identity, p.TailEnd(msg.job_id))

    def _on_tail_ack(self, client: Client, msg: p.TailAck, now: float) -> None:
        sub = self._tails.get(msg.job_id, {}).get(client)
        if sub is not None:
            sub.ack(msg.attempt, msg.fd, msg.offset)

    def _untail(self, job_id: str, client: Client) -> None:
        subs = self._tails.get(job_id)
        if subs is not None:
            subs.pop(client, None)
            if not subs:
                del self._tails[job_id]

    def _detail(self, job: Job, output: bool) -> p.JobDetail:
        spec = p.decode_spec(job.raw_spec)
        run = self._runs.get(job.job_id)
        entries = timeline(self._queued_at(job), run.steps if run else [])
        return p.JobDetail(job.job_id, True, p.readable_argv(spec.argv), p.readable(spec.cwd),
                           p.readable_argv(sorted(spec.env)[:500]), spec.tags, spec.priority,
                           spec.timeout, spec.tty, job.state.value if job.state else "",
                           job.worker.name if job.worker else "", job.attempt, entries, None, output)

    def _ended_detail(self, ended: Ended, output: bool) -> p.JobDetail:
        spec = p.decode_spec(ended.raw_spec) if ended.raw_spec else p.JobSpec([], {}, b"")
        return p.JobDetail(ended.job_id, True, p.readable_argv(spec.argv), p.readable(spec.cwd),
                           p.readable_argv(sorted(spec.env)[:500]), spec.tags,
                           spec.priority, spec.timeout, spec.tty, ended.outcome, ended.worker, ended.attempt,
                           timeline(ended.queued, ended.steps), ended.view(), output)


_RUNNING = JobState.RUNNING


def _live(job: Job) -> bool:
    return job.state in WAITING or job.state is JobState.RUNNING
