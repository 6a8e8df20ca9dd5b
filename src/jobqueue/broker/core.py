"""The :class:`Broker`: its construction, entry points and handler tables.

The handling itself is in the mixins: :mod:`.sessions` (hellos, re-attachment after a restart),
:mod:`.relay` (a job's messages from its client and its worker), :mod:`.losses` (lost peers,
requeue), :mod:`.status` (status, cancel, drain); the state and the primitives (``_transition``,
``_send``...) in :mod:`.base`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import events as ev
from .. import protocol as p
from .. import resources as r
from ..autoscale import WorkerView
from ..jobstate import WAITING, JobState
from ..model import Client, Job, Worker
from ..resources import RESERVE_AFTER
from ..scheduler import Scheduler
from ..tenancy import LOCAL, Policy, Tenancy
from .base import Frame, Send
from .losses import LossesMixin
from .relay import RelayMixin
from .sessions import SessionsMixin
from .status import StatusMixin

if TYPE_CHECKING:
    from ..observe import Observer


Handler = Callable[[bytes, Any, float], None]


@dataclass(frozen=True, slots=True)
class Census:
    queued: int
    running: int
    workers: int
    busy: int
    slots: int


class Broker(SessionsMixin, RelayMixin, LossesMixin, StatusMixin):
    def __init__(
        self,
        now: float,
        *,
        server_id: str = "server",
        software: str = "",
        heartbeat: float = 1.0,
        liveness: int = 5,
        restart_hold: float | None = None,
        wall_clock_ns: int = 0,
        tenancy: Tenancy | None = None,
        reserve_after: float = RESERVE_AFTER,
    ) -> None:
        self.server_id = server_id
        #: Owners, admins, per-key limits and fair share (default: one owner, no limits).
        self.tenancy = tenancy or Tenancy()
        #: The owner the current message comes from (see :meth:`receive`).
        self._owner = LOCAL
        self.software = software
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.lost_after = heartbeat * liveness
        #: After a restart, jobs are not dispatched until then, so that the workers and
        #: clients can re-announce what ran and what waited before new work starts.
        #: A fresh server (no peer says it knew an earlier one) dispatches at once.
        self.hold_until = now + (2 * heartbeat if restart_hold is None else restart_hold)
        self._restarted = False
        self.events: list[ev.Event] = []
        self.peers: dict[bytes, Client | Worker] = {}
        self.sessions: dict[str, Client | Worker] = {}
        self.jobs: dict[str, Job] = {}
        self._last_seen: OrderedDict[bytes, float] = OrderedDict()
        self._out: list[Send] = []
        #: The queue and the matching of jobs to workers' resources.
        self.scheduler = Scheduler(self.jobs, reserve_after)
        self._tenancy_hooks()
        #: Per kind of job (tags, request): why no connected worker could ever run it (cleared as workers come and go).
        self._never_fits_cache: dict[tuple[frozenset[str], r.Request], str] = {}
        self._grants: dict[r.Allocation, list[p.Grant]] = {}
        self._waiting = 0
        #: Tickets order jobs across restarts: wall-clock ns at first queueing.
        self._last_ticket = wall_clock_ns
        self._detached: dict[str, float] = {}
        #: Peers a send failed to reach (their connection is gone) -> when to call them lost.
        self._unreachable: dict[bytes, float] = {}
        self._holding = True
        #: Offsets of clients that re-attached before their job's worker did.
        self._client_offsets: dict[str, list[int]] = {}
        self._frame: Frame = b""
        #: What dashboards watch (see :meth:`watch`); None: nobody can watch.
        self.observer: Observer | None = None
        self._handlers: dict[type, Handler] = {
            p.ClientHello: self._on_client_hello,
            p.WorkerHello: self._on_worker_hello,
            p.StatusRequest: self._on_status_request,
            p.CancelRequest: self._on_cancel_request,
            p.DrainRequest: self._on_drain_request,
        }
        self._client_handlers: dict[type, Callable[[Client, Any, float], None]] = {
            p.Ping: self._on_ping,
            p.Bye: self._on_bye,
            p.Submit: self._on_submit,
            p.RelayedInput: self._on_input,
            p.Ack: self._on_client_ack,
            p.Signal: self._on_signal,
            p.Resize: self._on_resize,
            p.Release: self._on_release,
            p.CloseOutput: self._on_close_output,
            p.RelayedBlob: self._on_blob,
            p.Want: self._on_want,
        }
        self._worker_handlers: dict[type, Callable[[Worker, Any, float], None]] = {
            p.Ping: self._on_ping,
            p.Started: self._on_started,
            p.RelayedOutput: self._on_output,
            p.Ack: self._on_worker_ack,
            p.Finished: self._on_finished,
            p.Reject: self._on_reject,
            p.Goodbye: self._on_goodbye,
            p.Drain: self._on_worker_drain,
            p.Need: self._to_owner,
            p.Results: self._to_owner,
            p.RelayedResultData: self._on_result_data,
        }

    # --- the two entry points ----------------------------------------------------------------

    def receive(self, peer: bytes, data: Frame, now: float, role: p.Role | None = None,
                owner: str = LOCAL) -> list[Send]:
        """Handle one frame from ``peer``.  ``role`` is the role its
        authenticated key allows (None: no authentication, any role); ``owner``
        the name the server's shell found for it (its key's, or its Unix user's)."""
        self._frame = data
        self._owner = owner
        try:
            message = p.decode_to_server(data)
        except p.ProtocolError as e:
            self._reject(peer, str(e), fatal=p.hello_version(data) is not None)
            return self._flush()
        handler = self._handlers.get(type(message))
        if handler is not None:
            if self._allowed(peer, message, role):
                handler(peer, message, now)
            return self._flush()
        known = self.peers.get(peer)
        if known is None:
            self._send(peer, p.Unknown())
            return self._flush()
        self._seen(peer, now)
        if isinstance(known, Client):
            client_handler = self._client_handlers.get(type(message))
            if client_handler is None:
                self._refuse_role(known, message, "client")
            else:
                client_handler(known, message, now)
        else:
            worker_handler = self._worker_handlers.get(type(message))
            if worker_handler is None:
                self._refuse_role(known, message, "worker")
            else:
                worker_handler(known, message, now)
        self._dispatch(now)
        return self._flush()

    def tick(self, now: float) -> list[Send]:
        """Act on everything whose time has come: lost peers, re-attachments
        that did not happen, the end of the restart hold."""
        while self._last_seen:
            identity, seen = next(iter(self._last_seen.items()))
            if seen + self.lost_after > now:  # the very expression next_deadline() gives
                break
            self._peer_lost(self.peers[identity], now)
        for identity, deadline in list(self._unreachable.items()):
            if deadline <= now:
                del self._unreachable[identity]
                if identity in self.peers:
                    self._peer_lost(self.peers[identity], now)
        for job_id, deadline in list(self._detached.items()):
            if deadline <= now:
                self._reattach_expired(self.jobs[job_id], now)
        self._dispatch(now)
        if self.observer is not None:
            self.observer.tick(now)
        return self._flush()

    def peer_gone(self, peer: bytes, now: float) -> list[Send]:
        """The transport found ``peer``'s connection gone (a send to it failed).
        A peer that only reconnected says hello again within a heartbeat or so
        (its session moves to the new connection); otherwise it is lost after
        two heartbeats instead of its whole liveness."""
        if peer in self.peers:
            self._unreachable.setdefault(peer, now + 2 * self.heartbeat)
        return self._flush()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing pending)."""
        candidates = [min(d.values()) for d in (self._detached, self._unreachable) if d]
        if self._last_seen:
            candidates.append(next(iter(self._last_seen.values())) + self.lost_after)
        if self._holding and self._restarted and self._waiting and self.scheduler.has_ready:
            candidates.append(self.hold_until)
        if self.observer is not None:
            candidates.append(self.observer.next_deadline())
        return min(candidates) if candidates else None

    # --- tenancy: the server's key files changed (SIGHUP) ------------------------------------

    def configure(self, tenancy_policy: Policy, now: float) -> list[Send]:
        """Take new limits, admins and worker tags: the queues are rebuilt (which owners
        have queues of their own may have changed), and connected workers whose key
        may no longer advertise their tags are disconnected as if revoked."""
        self.tenancy.configure(tenancy_policy)
        self._tenancy_hooks()
        self.scheduler.clear_queues()
        for job in sorted(self.jobs.values(), key=lambda j: j.heap_seq):
            if job.state in WAITING:
                self._enqueue(job)
        for worker in [w for w in self.peers.values() if isinstance(w, Worker)]:
            why = self.tenancy.worker_refusal(worker.owner, sorted(worker.tags))
            if why:
                self._revoke(worker, why, now)
        self._dispatch(now)
        return self._flush()

    def revoke(self, peer: bytes, why: str, now: float) -> list[Send]:
        """The key ``peer`` authenticated with was removed: refuse it (fatally), drop
        its queued jobs and kill its running ones (a client), or requeue its jobs (a worker)."""
        known = self.peers.get(peer)
        if known is not None:
            self._revoke(known, why, now)
            self._dispatch(now)
        return self._flush()

    def _tenancy_hooks(self) -> None:
        """Tenancy's rules in the scheduler: the owners it tells apart wait in queues of their
        own (:meth:`Tenancy.queue_part`), an owner at its max-running is passed over, and under
        fair share the owner with the fewest running jobs goes first within a priority."""
        tenancy, scheduler = self.tenancy, self.scheduler

        def part(job: Job) -> str:
            return tenancy.queue_part(job.owner_name)

        def may_start(job: Job) -> bool:
            owner = tenancy.queue_part(job.owner_name)
            return not owner or tenancy.may_start(owner)

        def fair(job: Job, entry: tuple[int, int, int, str]) -> tuple[int, int, int]:
            return entry[0], tenancy.running.get(tenancy.queue_part(job.owner_name), 0), entry[1]

        scheduler.partition, scheduler.may_start = part, may_start
        scheduler.rank = fair if tenancy.fair_share else None
        scheduler.reconsider()

    # --- read-only views and observers -------------------------------------------------------

    def census(self) -> Census:
        """Counts of jobs and workers (read-only, for the metrics gauges)."""
        states = [job.state for job in self.jobs.values()]
        workers = [w for w in self.peers.values() if isinstance(w, Worker)]
        return Census(queued=sum(state in WAITING for state in states),
                      running=sum(state is JobState.RUNNING for state in states),
                      workers=len(workers), busy=sum(bool(w.running) for w in workers),
                      slots=sum(w.slots for w in workers))

    def worker_views(self) -> list[WorkerView]:
        """The connected workers as the autoscaler sees them (read-only)."""
        return [WorkerView(w.tags, w.free, w.draining, w.spawn_id)
                for w in self.peers.values() if isinstance(w, Worker)]

    def watch(self, observer: Observer, handlers: dict[type, Callable[[Client, Any, float], None]]) -> None:
        """Let ``observer`` see the broker through its hooks, and take the clients'
        messages it handles (Watch, Tail...)."""
        self.observer = observer
        self._client_handlers.update(handlers)

    def waiting_tag_sets(self, fits: Callable[[r.Request], bool] | None = None) -> dict[frozenset[str], int]:
        """How many jobs wait, per tag set, of those whose request ``fits`` (read-only, for the autoscaler)."""
        counts: dict[frozenset[str], int] = {}
        for job in self.jobs.values():
            if job.state in WAITING and (fits is None or fits(job.request)):
                counts[job.tag_key] = counts.get(job.tag_key, 0) + 1
        return counts
