"""The broker's state and the primitives every part of it uses.

:class:`BrokerBase` declares the state (set up by :class:`~jobqueue.broker.core.Broker`'s
constructor) and holds what all the mixins call: :meth:`~BrokerBase._transition` (the only
place a job changes state), sending, events, rejections, the queue and the matching.  The few
methods one mixin calls in another are declared at its end, so that mypy checks those calls too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import events as ev
from .. import protocol as p
from .. import resources as r
from ..jobstate import WAITING, JobEvent, JobState, next_state
from ..model import Client, Job, Worker
from ..scheduler import Scheduler
from ..tenancy import Tenancy
from .validate import _kind

if TYPE_CHECKING:
    from ..observe import Observer


#: A frame as received: relayed messages go out as the very frame that came in.
Frame = bytes | memoryview


@dataclass(slots=True)
class Send:
    """Send ``message`` (a struct, or an already encoded frame) to ``peer``."""

    peer: bytes
    message: p.Message | Frame


class BrokerBase:
    """The broker's state (see :meth:`Broker.__init__ <jobqueue.broker.core.Broker.__init__>`) and its primitives."""

    server_id: str
    tenancy: Tenancy
    _owner: str
    software: str
    heartbeat: float
    liveness: int
    lost_after: float
    hold_until: float
    _restarted: bool
    events: list[ev.Event]
    peers: dict[bytes, Client | Worker]
    sessions: dict[str, Client | Worker]
    jobs: dict[str, Job]
    _last_seen: OrderedDict[bytes, float]
    _out: list[Send]
    scheduler: Scheduler
    _never_fits_cache: dict[tuple[frozenset[str], r.Request], str]
    _grants: dict[r.Allocation, list[p.Grant]]
    _waiting: int
    _last_ticket: int
    _detached: dict[str, float]
    _unreachable: dict[bytes, float]
    _holding: bool
    _client_offsets: dict[str, list[int]]
    _frame: Frame
    observer: Observer | None

    # --- the queue and the matching ----------------------------------------------------------

    def _ticket(self, previous: int) -> int:
        if previous > 0:
            return previous
        self._last_ticket += 1
        return self._last_ticket

    def _enqueue(self, job: Job) -> None:
        self.scheduler.enqueue(job)

    def _dispatch(self, now: float) -> None:
        """Give waiting jobs to workers with room (see :mod:`jobqueue.scheduler`)."""
        if (self._restarted and now < self.hold_until) or not self._waiting or not self.scheduler.pending:
            return
        self._holding = False
        self.scheduler.dispatch(now, lambda job, worker, allocation: self._assign(job, worker, allocation, now))

    def _assign(self, job: Job, worker: Worker, allocation: r.Allocation, now: float) -> None:
        job.waited = now - job.since
        job.reserved_on = None
        self._transition(job, JobEvent.ASSIGN, now)
        job.attempt += 1
        job.worker = worker
        worker.running[job.job_id] = job.attempt
        grants = self._grants.get(allocation)  # allocations without items repeat: one list each
        if grants is None:
            grants = [p.Grant(name, amount, list(items)) for name, amount, items in allocation]
            if not any(items for _, _, items in allocation) and len(self._grants) < 1000:
                self._grants[allocation] = grants
        self._send(worker.identity, p.assign_encoded(job.job_id, job.attempt, job.raw_spec, grants))

    def _refresh_ready(self, worker: Worker) -> None:
        """The worker's room or state changed."""
        if self.observer is not None:
            self.observer.worker_changed(worker)
        if worker.identity not in self.peers:
            worker.gone = True
        self.scheduler.refresh(worker)

    def _cancel(self, job: Job, signum: int, now: float, by: str = "") -> None:
        waited = round(now - job.since, 3)
        self._transition(job, JobEvent.CANCEL, now)
        self._event(ev.JobCancelled(job.job_id, signum, waited, by))
        self._finish_for_client(job, p.Finished(job.job_id, job.attempt, 128 + signum, "cancelled",
                                                "cancelled while queued"))

    def _finish_for_client(self, job: Job, finished: p.Finished) -> None:
        if job.owner is not None:
            self._send(job.owner.identity, finished)
        self._drop(job)

    def _drop(self, job: Job) -> None:
        if job.worker is not None:
            job.worker.finished.discard(job.job_id)
        self.jobs.pop(job.job_id, None)
        self._detached.pop(job.job_id, None)
        if job.owner is not None:
            job.owner.jobs.pop(job.job_id, None)

    # --- helpers -----------------------------------------------------------------------------

    def _transition(self, job: Job, event: JobEvent, now: float) -> None:
        """The only place a job changes state; keeps the waiting count."""
        old = job.state
        job.state = next_state(job.job_id, old, event)
        self._waiting += (job.state in WAITING) - (old in WAITING)
        self.tenancy.moved(job.owner_name, old, job.state)
        if old is JobState.RUNNING and self.tenancy.limits(job.owner_name).max_running is not None:
            self.scheduler.reconsider()  # its owner may start another: on any worker it fits
        if self.observer is not None:  # before ``since`` moves: it tells how long the old state lasted
            self.observer.job_moved(job, old, now)
        if job.state is not JobState.FINISHED:
            job.since = now

    def _seen(self, identity: bytes, now: float) -> None:
        self._last_seen[identity] = now
        self._last_seen.move_to_end(identity)

    def _send(self, peer: bytes, message: p.Message | Frame) -> None:
        self._out.append(Send(peer, message))

    def _flush(self) -> list[Send]:
        out, self._out = self._out, []
        return out

    def _event(self, event: ev.Event) -> None:
        self.events.append(event)

    def _reject(self, peer: bytes, reason: str, *, fatal: bool) -> None:
        self._event(ev.Rejected(peer.hex(), reason, self._owner))
        self._send(peer, p.Refused(reason) if fatal else p.Error(reason))

    def _refuse_role(self, peer: Client | Worker, message: p.Message, role: str) -> None:
        kind = _kind(message)
        self._event(ev.Rejected(peer.name, f"a {role} may not send {kind}"))
        self._send(peer.identity, p.Error(f"a {role} may not send {kind}"))

    # --- implemented by the mixins, called across them --------------------------------------

    def _client_reattach(self, client: Client, msg: p.Submit, now: float) -> None:
        raise NotImplementedError  # sessions.py

    def _resume(self, job: Job, offsets: list[int]) -> None:
        raise NotImplementedError  # sessions.py

    def _signal_job(self, job: Job, signum: int, now: float, by: str = "") -> None:
        raise NotImplementedError  # relay.py

    def _remove_worker(self, worker: Worker, now: float, *, counts_as_loss: bool, reason: str) -> None:
        raise NotImplementedError  # losses.py

    def _forget_client(self, client: Client, now: float, event: Callable[[str, int], ev.Event]) -> None:
        raise NotImplementedError  # losses.py

    def _never_fits(self, job: Job) -> str:
        raise NotImplementedError  # status.py
