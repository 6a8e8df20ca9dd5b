"""The broker's logic as a pure state machine (sans-IO).

Events in: :meth:`Broker.receive` (a frame from a peer) and :meth:`Broker.tick`
(time passed), both given ``now``.  Messages out: the :class:`Send` list they
return, plus :attr:`Broker.events` for the log.  No sockets, no clock.

What it does: keeps the queue and matches jobs to workers' resources (both in
:mod:`jobqueue.scheduler`: priority, then first-in first-out, on the worker
that has waited longest among those whose tags and free resources fit),
routes a job's stdio between its client and its worker, watches the
liveness of every peer, requeues the jobs of lost workers, kills the jobs of
lost clients, and rebuilds its state after a restart from what clients and
workers tell it again.  A job's moves are the table in :mod:`jobqueue.jobstate`.
"""

from __future__ import annotations

import signal as _signal
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import protocol as p
from . import resources as r
from .autoscale import WorkerView
from .jobstate import TERMINAL, WAITING, JobEvent, JobState, next_state
from .model import Client, Job, Peer, Worker
from .resources import RESERVE_AFTER
from .scheduler import Scheduler
from .tenancy import LOCAL, UNKNOWN, Policy, Tenancy

if TYPE_CHECKING:
    from .observe import Observer

__all__ = ["Broker", "Client", "Frame", "Job", "Peer", "Send", "Worker"]

MAX_JOB_ID = 64
#: The most arguments and environment Linux runs (6 MiB: a quarter of the stack
#: limit, at most three quarters of 8 MiB); clients check their own ARG_MAX first.
MAX_EXEC_BYTES = 6 << 20
MAX_TERMINAL = 10_000


#: A frame as received: relayed messages go out as the very frame that came in.
Frame = bytes | memoryview


@dataclass(slots=True)
class Send:
    """Send ``message`` (a struct, or an already encoded frame) to ``peer``."""

    peer: bytes
    message: p.Message | Frame


Handler = Callable[[bytes, Any, float], None]


@dataclass(frozen=True, slots=True)
class Census:
    queued: int
    running: int
    workers: int
    busy: int
    slots: int


class Broker:
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

    # --- the two entry points ---------------------------------------------------

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

    # --- tenancy: the server's key files changed (SIGHUP) -----------------------------

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

    def _revoke(self, peer: Client | Worker, why: str, now: float) -> None:
        self._send(peer.identity, p.Refused(why))
        if isinstance(peer, Worker):
            self._event(ev.WorkerRevoked(peer.name, why))
            self._remove_worker(peer, now, counts_as_loss=False, reason=f"worker {peer.name} was revoked")
        else:
            self._forget_client(peer, now, lambda name, jobs: ev.ClientRevoked(name, peer.owner, jobs))

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

    def _claim(self, job: Job, owner: str) -> None:
        """A job known only from its worker (after a restart) is claimed by its client."""
        self.tenancy.moved(job.owner_name, job.state, None)
        job.owner_name = owner
        self.tenancy.moved(owner, None, job.state)

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

    # --- sessions ------------------------------------------------------------------

    def _allowed(self, peer: bytes, message: p.Message, role: p.Role | None) -> bool:
        """A hello must match its key's role; status, cancel and drain need a client key."""
        if isinstance(message, (p.ClientHello, p.WorkerHello)):
            return self._check_hello(peer, message, role)
        if role not in (None, "client"):
            self._reject(peer, f"a {role} key may not send {_kind(message)}", fatal=True)
            return False
        return True

    def _check_hello(self, peer: bytes, hello: p.ClientHello | p.WorkerHello, role: p.Role | None) -> bool:
        wanted = "client" if isinstance(hello, p.ClientHello) else "worker"
        if hello.version != p.PROTOCOL_VERSION:
            self._reject(peer, p.version_mismatch(hello.version), fatal=True)
            return False
        if hello.previous_server and hello.previous_server != self.server_id and self._holding:
            self._restarted = True  # a peer of the previous server: let them all re-announce first
        if role is not None and role != wanted:
            self._reject(peer, f"this key is authorized as a {role}, not as a {wanted}", fatal=True)
            return False
        return True

    def _on_client_hello(self, peer: bytes, hello: p.ClientHello, now: float) -> None:
        old = self.sessions.get(hello.session)
        if old is not None and old.owner != self._owner:
            self._reject(peer, "session id already used by another owner", fatal=True)
            return
        if isinstance(old, Client):
            self._move_peer(old, peer)
        elif old is None:
            client = Client(peer, hello.session, hello.name, hello.host, hello.pid, hello.software, now, self._owner)
            self.peers[peer] = self.sessions[hello.session] = client
            self._event(ev.ClientJoined(client.name, client.host, client.pid, client.owner))
        else:
            self._reject(peer, "session id already used by a worker", fatal=True)
            return
        self._seen(peer, now)
        self._welcome(peer)

    def _on_worker_hello(self, peer: bytes, hello: p.WorkerHello, now: float) -> None:
        old = self.sessions.get(hello.session)
        if isinstance(old, Client):
            self._reject(peer, "session id already used by a client", fatal=True)
            return
        refusal = self.tenancy.worker_refusal(self._owner, hello.tags) or (
            "session id already used by another key" if old is not None and old.owner != self._owner else "")
        if refusal:
            self._reject(peer, refusal, fatal=True)
            return
        if isinstance(old, Worker):
            self._move_peer(old, peer)
            worker = old
        else:
            slots = max(1, hello.slots)
            worker = Worker(
                peer, hello.session, hello.name, hello.host, hello.pid, hello.software, now, self._owner,
                slots=slots, tags=frozenset(hello.tags), spawn_id=hello.spawn_id,
                holdings=r.Holdings(_pools(hello, slots), slots),
            )
            self.peers[peer] = self.sessions[hello.session] = worker
            self._never_fits_cache.clear()
            self._event(ev.WorkerJoined(worker.name, worker.host, worker.slots, sorted(worker.tags),
                                        worker.spawn_id))
        self._seen(peer, now)
        self._welcome(peer)
        self._sync_worker_jobs(worker, hello.jobs, now)
        worker.draining = hello.draining
        self._refresh_ready(worker)
        self._dispatch(now)

    def _sync_worker_jobs(self, worker: Worker, held: list[p.ActiveJob], now: float) -> None:
        """Make the broker's view of ``worker`` match what it says it holds."""
        reported = {a.job_id: a for a in held}
        for job_id in list(worker.running):
            if job_id not in reported:  # our Assign never reached it
                worker.let_go(job_id)
                job = self.jobs.get(job_id)
                if job is not None and job.worker is worker and job.state is JobState.RUNNING:
                    self._transition(job, JobEvent.REJECT, now)
                    job.worker = None
                    self._enqueue(job)
        for active in held:
            self._adopt(worker, active, now)

    def _adopt(self, worker: Worker, active: p.ActiveJob, now: float) -> None:
        job = self.jobs.get(active.job_id)
        if job is None:
            # Restarted server: the worker is the first to tell about this job.
            job = Job(active.job_id, 0, None, now, attempt=active.attempt)
            job.keep_spec(p.JobSpec(argv=active.argv, env={}, cwd=b"", tags=active.tags))
            self._transition(job, JobEvent.REATTACH, now)
            self.jobs[job.job_id] = job
            self._attach_worker(job, worker, active.allocation)
            self._detached[job.job_id] = now + self.lost_after
            if active.finished:
                self._transition(job, JobEvent.FINISH, now)
                worker.let_go(job.job_id)
                worker.finished.add(job.job_id)
            return
        if job.state in WAITING and job.worker is None and active.attempt > job.attempt:
            self._adopt_queued(job, worker, active, now)
            return
        other_worker = job.worker is not None and job.worker is not worker
        if job.state in WAITING or job.attempt != active.attempt or other_worker:
            self._send(worker.identity, p.Kill(active.job_id, active.attempt, "stale attempt"))
            worker.adopt(active.job_id, active.attempt, active.allocation)
            return
        if job.worker is None and job.state is JobState.RUNNING:
            # The client re-attached first (Submit with running=True).
            self._attach_worker(job, worker, active.allocation)
            self._detached.pop(job.job_id, None)
            self._resume(job, self._client_offsets.pop(job.job_id, [0, 0]))
        else:
            worker.adopt(job.job_id, job.attempt, active.allocation)

    def _adopt_queued(self, job: Job, worker: Worker, active: p.ActiveJob, now: float) -> None:
        """After a restart, a client re-queued its job without knowing that its latest attempt had started
        (the server died before relaying Started); its worker now says it runs (or ran)
        it: that run is the job's, not a stale one to kill and run again."""
        self._transition(job, JobEvent.REATTACH, now)
        job.attempt = active.attempt
        self._attach_worker(job, worker, active.allocation)
        if active.finished:
            self._transition(job, JobEvent.FINISH, now)
            worker.let_go(job.job_id)
            worker.finished.add(job.job_id)
        self._resume(job, [0, 0])

    def _attach_worker(self, job: Job, worker: Worker, allocation: list[p.Grant]) -> None:
        job.worker = worker
        worker.adopt(job.job_id, job.attempt, allocation)

    def _move_peer(self, peer: Client | Worker, identity: bytes) -> None:
        """A known session reconnected on a new connection."""
        if peer.identity != identity:
            self.peers.pop(peer.identity, None)
            self._last_seen.pop(peer.identity, None)
            self._unreachable.pop(peer.identity, None)
            peer.identity = identity
            self.peers[identity] = peer

    def _welcome(self, peer: bytes) -> None:
        self._send(peer, p.Welcome(self.server_id, self.heartbeat, self.liveness))

    def _on_ping(self, peer: Client | Worker, _: p.Ping, now: float) -> None:
        self._send(peer.identity, p.Pong())

    def _on_bye(self, client: Client, _: p.Bye, now: float) -> None:
        self._forget_client(client, now, ev.ClientLeft)

    # --- client messages -------------------------------------------------------------

    def _on_submit(self, client: Client, msg: p.Submit, now: float) -> None:
        problem = _validate_submit(msg)
        if problem:
            self._send(client.identity, p.Error(problem, msg.job_id))
            self._event(ev.Rejected(client.name, problem))
            return
        job = self.jobs.get(msg.job_id)
        if job is not None:
            self._resubmit(client, job, msg, now)
        elif msg.running and msg.attempt > 0:
            self._client_reattach(client, msg, now)
        else:
            refusal = self.tenancy.admit(client.owner, msg.spec.tags, msg.spec.priority)
            if refusal:
                self._send(client.identity, p.Error(refusal, msg.job_id))
                self._event(ev.Rejected(client.name, refusal, client.owner))
                return
            # A re-submission keeps its attempt count (after a restart): attempts stay
            # unique, so a stale run's messages are never taken for the next run's.
            job = Job(msg.job_id, self._ticket(msg.ticket), client, now, owner_name=client.owner,
                      attempt=msg.attempt)
            job.keep_spec(msg.spec)
            self._transition(job, JobEvent.SUBMIT, now)
            self.jobs[job.job_id] = job
            client.jobs[job.job_id] = None
            self._enqueue(job)
            self._event(ev.JobQueued(job.job_id, client.name, job.priority, job.tags, client.owner))
            self._send(client.identity, p.Queued(job.job_id, job.ticket, self._waiting, self._never_fits(job)))

    def _resubmit(self, client: Client, job: Job, msg: p.Submit, now: float) -> None:
        """The same job submitted again: a client re-attaching after it lost
        the server, or to a job a worker re-announced first."""
        if (job.owner is not None and job.owner is not client) or job.owner_name not in (UNKNOWN, client.owner):
            self._send(client.identity, p.Error(f"job id {job.job_id} is in use by another client", job.job_id))
            return
        if job.owner is None:
            self._claim(job, client.owner)
            job.owner = client
            client.jobs[job.job_id] = None
            job.keep_spec(msg.spec)
            self._detached.pop(job.job_id, None)
        if job.state in WAITING:
            self._send(client.identity, p.Queued(job.job_id, job.ticket, self._waiting))
        elif job.worker is not None and job.state in (JobState.RUNNING, JobState.FINISHED):
            offsets = msg.offsets if msg.attempt == job.attempt else [0, 0]
            self._resume(job, offsets)

    def _client_reattach(self, client: Client, msg: p.Submit, now: float) -> None:
        """After a restart, a client says its job was running; wait for its worker."""
        job = Job(msg.job_id, self._ticket(msg.ticket), client, now, owner_name=client.owner, attempt=msg.attempt)
        job.keep_spec(msg.spec)
        self._transition(job, JobEvent.REATTACH, now)
        self.jobs[job.job_id] = job
        client.jobs[job.job_id] = None
        self._client_offsets[job.job_id] = list(msg.offsets)
        self._detached[job.job_id] = now + self.lost_after

    def _resume(self, job: Job, offsets: list[int]) -> None:
        assert job.worker is not None and job.owner is not None
        self._send(job.worker.identity, p.Resume(job.job_id, job.attempt, offsets))
        self._send(job.owner.identity, p.Started(job.job_id, job.attempt, 0, job.worker.name,
                                                 job.worker.host, resumed=True))

    def _owned_job(self, client: Client, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.owner is not client:
            self._send(client.identity, p.Error(f"no job {job_id} of yours", job_id))
            self._event(ev.Rejected(client.name, f"message for job {job_id} it does not own"))
            return None
        return job

    def _to_worker(self, client: Client, job_id: str, attempt: int | None, data: p.Message | Frame) -> None:
        job = self._owned_job(client, job_id)
        if job is None or job.worker is None or job.state is not JobState.RUNNING:
            return
        if attempt is None or attempt == job.attempt:
            self._send(job.worker.identity, data)

    def _on_input(self, client: Client, msg: p.RelayedInput, now: float) -> None:
        if not p.is_bin(msg.data):
            self._reject(client.identity, "Input: field 'data' must be bytes", fatal=False)
            return
        self._to_worker(client, msg.job_id, msg.attempt, self._frame)

    def _on_client_ack(self, client: Client, msg: p.Ack, now: float) -> None:
        if msg.fd not in (p.STDOUT, p.STDERR, p.RESULTS):
            self._send(client.identity, p.Error("a client acknowledges fds 1, 2 and 4 only", msg.job_id))
            return
        self._to_worker(client, msg.job_id, msg.attempt, self._frame)

    def _on_close_output(self, client: Client, msg: p.CloseOutput, now: float) -> None:
        if msg.fd not in (p.STDOUT, p.STDERR):
            self._send(client.identity, p.Error("a client closes fds 1 and 2 only", msg.job_id))
            return
        self._to_worker(client, msg.job_id, msg.attempt, self._frame)

    def _on_resize(self, client: Client, msg: p.Resize, now: float) -> None:
        if not (0 <= msg.rows <= MAX_TERMINAL and 0 <= msg.cols <= MAX_TERMINAL):
            self._send(client.identity, p.Error(f"terminal size must be 0 to {MAX_TERMINAL}", msg.job_id))
            return
        self._to_worker(client, msg.job_id, None, msg)

    def _on_signal(self, client: Client, msg: p.Signal, now: float) -> None:
        if not _valid_signal(msg.signum):
            self._send(client.identity, p.Error(f"no signal number {msg.signum}", msg.job_id))
            return
        job = self._owned_job(client, msg.job_id)
        if job is not None:
            self._signal_job(job, msg.signum, now, by=client.owner)

    def _signal_job(self, job: Job, signum: int, now: float, by: str = "") -> None:
        if job.state in WAITING:
            self._cancel(job, signum, now, by)
        elif job.state is JobState.RUNNING and job.worker is not None:
            self._event(ev.JobSignal(job.job_id, job.worker.name, signum, by))
            self._send(job.worker.identity, p.Signal(job.job_id, signum))

    def _on_release(self, client: Client, msg: p.Release, now: float) -> None:
        job = self._owned_job(client, msg.job_id)
        if job is not None and job.state is JobState.FINISHED:
            if job.worker is not None:
                self._send(job.worker.identity, p.Release(job.job_id, job.attempt))
            self._drop(job)

    # --- worker messages -------------------------------------------------------------

    def _worker_job(self, worker: Worker, job_id: str, attempt: int) -> Job | None:
        """The job, if ``worker`` really runs this attempt of it (else None)."""
        job = self.jobs.get(job_id)
        if job is None or job.worker is not worker or job.attempt != attempt:
            if job_id not in worker.running and job_id not in worker.finished:
                self._event(ev.Rejected(worker.name, f"message for job {job_id} it was not given"))
            return None
        return job

    def _on_started(self, worker: Worker, msg: p.Started, now: float) -> None:
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        if job is None or job.state is not JobState.RUNNING:
            return
        self._event(ev.JobStarted(job.job_id, worker.name, job.attempt, round(job.waited + now - job.since, 3)))
        job.since = now
        if job.owner is not None:
            self._send(job.owner.identity, p.Started(job.job_id, job.attempt, msg.pid, worker.name, worker.host))

    def _on_output(self, worker: Worker, msg: p.RelayedOutput, now: float) -> None:
        if not p.is_bin(msg.data):
            self._reject(worker.identity, "Output: field 'data' must be bytes", fatal=False)
            return
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        if job is not None and job.owner is not None and msg.fd in (p.STDOUT, p.STDERR):
            self._send(job.owner.identity, self._frame)
            if self.observer is not None:
                self.observer.output(job, msg, self._frame)

    def _on_worker_ack(self, worker: Worker, msg: p.Ack, now: float) -> None:
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        if job is not None and job.owner is not None and msg.fd in (p.STDIN, p.STAGE_IN):
            self._send(job.owner.identity, self._frame)

    # jq --stage: blobs and Want go from the job's client to its worker, Need,
    # Results and ResultData back; relayed as they came, like Input and Output.

    def _on_blob(self, client: Client, msg: p.RelayedBlob, now: float) -> None:
        if not p.is_bin(msg.data):
            self._reject(client.identity, "Blob: field 'data' must be bytes", fatal=False)
            return
        self._to_worker(client, msg.job_id, msg.attempt, self._frame)

    def _on_want(self, client: Client, msg: p.Want, now: float) -> None:
        self._to_worker(client, msg.job_id, msg.attempt, self._frame)

    def _to_owner(self, worker: Worker, msg: p.Need | p.Results, now: float) -> None:
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        if job is not None and job.owner is not None:
            self._send(job.owner.identity, self._frame)

    def _on_result_data(self, worker: Worker, msg: p.RelayedResultData, now: float) -> None:
        if not p.is_bin(msg.data):
            self._reject(worker.identity, "ResultData: field 'data' must be bytes", fatal=False)
            return
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        if job is not None and job.owner is not None:
            self._send(job.owner.identity, self._frame)

    def _on_finished(self, worker: Worker, msg: p.Finished, now: float) -> None:
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        held = worker.let_go(msg.job_id)
        if job is None:
            if held is not None:  # a job we had it kill: it need not keep it
                self._send(worker.identity, p.Release(msg.job_id, msg.attempt))
        else:
            if job.state is JobState.RUNNING:
                self._transition(job, JobEvent.FINISH, now)
                worker.finished.add(job.job_id)
                self._event(ev.JobFinished(job.job_id, worker.name, msg.status, msg.reason,
                                           round(now - job.since, 3)))
            if job.owner is not None:  # also a re-sent end, after a Resume
                self._send(job.owner.identity, msg)
        self._refresh_ready(worker)

    def _on_reject(self, worker: Worker, msg: p.Reject, now: float) -> None:
        job = self._worker_job(worker, msg.job_id, msg.attempt)
        worker.let_go(msg.job_id)
        if job is not None and job.state is JobState.RUNNING:
            self._transition(job, JobEvent.REJECT, now)
            job.worker = None
            self._enqueue(job)
        self._refresh_ready(worker)

    def _on_goodbye(self, worker: Worker, msg: p.Goodbye, now: float) -> None:
        self._event(ev.WorkerLeft(worker.name, msg.reason))
        self._remove_worker(worker, now, counts_as_loss=False, reason=f"worker {worker.name} stopped")

    def _on_worker_drain(self, worker: Worker, _: p.Drain, now: float) -> None:
        worker.draining = True
        self._refresh_ready(worker)
        self._event(ev.WorkerDraining(worker.name))

    # --- control requests ----------------------------------------------------------------

    def _on_status_request(self, peer: bytes, msg: p.StatusRequest, now: float) -> None:
        infos = self._job_infos(now, self._owner)
        self._send(peer, p.StatusReply(self.server_id, self.software, self._worker_infos(now), infos))

    def _on_cancel_request(self, peer: bytes, msg: p.CancelRequest, now: float) -> None:
        done: list[str] = []
        unknown: list[str] = []
        refused: list[str] = []
        for job_id in msg.job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.state in TERMINAL or not _valid_signal(msg.signum or _signal.SIGTERM):
                unknown.append(job_id)
            elif not self.tenancy.may_cancel(self._owner, job.owner_name):
                owner = job.owner_name or "an owner not known yet"
                why = f"job {job_id} belongs to {owner}: only an admin may cancel it"
                refused.append(why)
                self._event(ev.Rejected(peer.hex(), why, self._owner))
            else:
                self._signal_job(job, msg.signum or _signal.SIGTERM, now, by=self._owner)
                done.append(job_id)
        self._send(peer, p.ControlReply(done, unknown, refused))

    def _on_drain_request(self, peer: bytes, msg: p.DrainRequest, now: float) -> None:
        if not self.tenancy.may_drain(self._owner):
            why = f"only an admin may drain workers ({self._owner} is not one: see --admins)"
            self._event(ev.Rejected(peer.hex(), why, self._owner))
            self._send(peer, p.ControlReply([], [], [why]))
            return
        done: list[str] = []
        unknown: list[str] = []
        for name in msg.workers:
            matches = [w for w in self.peers.values() if isinstance(w, Worker) and name in (w.name, w.session)]
            for worker in matches:
                self._event(ev.DrainRequested(worker.name, self._owner))
                worker.draining = True
                self._refresh_ready(worker)
                self._send(worker.identity, p.Drain())
            (done if matches else unknown).append(name)
        self._send(peer, p.ControlReply(done, unknown))

    # --- losses -----------------------------------------------------------------------------

    def _peer_lost(self, peer: Client | Worker, now: float) -> None:
        if isinstance(peer, Worker):
            self._event(ev.WorkerLost(peer.name, round(now - self._last_seen[peer.identity], 3)))
            self._remove_worker(peer, now, counts_as_loss=True, reason=f"worker {peer.name} was lost")
        else:
            self._forget_client(peer, now, ev.ClientLost)

    def _remove_worker(self, worker: Worker, now: float, *, counts_as_loss: bool, reason: str) -> None:
        if self.observer is not None:
            self.observer.worker_gone(worker, counts_as_loss, now)
        self._forget_peer(worker)
        for job_id in [*worker.running, *worker.finished]:
            job = self.jobs.get(job_id)
            if job is not None and job.worker is worker:
                self._run_again(job, now, counts_as_loss, reason)

    def _run_again(self, job: Job, now: float, counts_as_loss: bool, reason: str) -> None:
        """The job's worker is gone: requeue it, or give up on a poison job."""
        job.worker = None
        self._detached.pop(job.job_id, None)
        if job.state is JobState.FINISHED:  # its end is already with the client
            self._drop(job)
            return
        if job.owner is None:  # known only from its worker after a restart: nobody to run it for
            self._client_gone(job, now)
            return
        job.losses += counts_as_loss
        if job.losses >= job.max_attempts:
            self._transition(job, JobEvent.GIVE_UP, now)
            message = (f"{reason}; the job's worker was lost {job.losses} times in a row, "
                       f"so it is not run again (a job that crashes its workers?)")
            self._event(ev.JobLost(job.job_id, message))
            self._finish_for_client(job, p.Finished(job.job_id, job.attempt, 255, "lost", message))
            return
        self._transition(job, JobEvent.WORKER_LOST, now)
        self._event(ev.JobRequeued(job.job_id, job.attempt, reason))
        if job.owner is not None:
            self._send(job.owner.identity, p.Requeued(job.job_id, job.attempt, reason))
        self._enqueue(job)

    def _forget_client(self, client: Client, now: float, event: Callable[[str, int], ev.Event]) -> None:
        self._forget_peer(client)
        self._event(event(client.name, len(client.jobs)))
        for job_id in list(client.jobs):
            job = self.jobs.get(job_id)
            if job is not None:
                self._client_gone(job, now)

    def _client_gone(self, job: Job, now: float) -> None:
        """Nobody waits for ``job`` any more: drop it, or kill it on its worker."""
        self._transition(job, JobEvent.CLIENT_LOST, now)
        if job.worker is not None:
            kind = p.Release(job.job_id, job.attempt) if job.state is JobState.FINISHED else \
                p.Kill(job.job_id, job.attempt, "its client is gone")
            self._send(job.worker.identity, kind)
        if job.state is JobState.LOST:
            self._event(ev.JobLost(job.job_id, "its client is gone"))
        self._drop(job)

    def _reattach_expired(self, job: Job, now: float) -> None:
        """After a restart, one side of a running job never came back."""
        del self._detached[job.job_id]
        if job.owner is None:
            self._client_gone(job, now)
        else:
            self._run_again(job, now, True, "its worker did not come back after the server restarted")

    def _forget_peer(self, peer: Client | Worker) -> None:
        self.peers.pop(peer.identity, None)
        self._last_seen.pop(peer.identity, None)
        self._unreachable.pop(peer.identity, None)
        if self.sessions.get(peer.session) is peer:
            del self.sessions[peer.session]
        if isinstance(peer, Worker):
            self._never_fits_cache.clear()
            peer.gone = True
            self.scheduler.refresh(peer)
        elif self.observer is not None:
            self.observer.peer_gone(peer)

    # --- the queue and the matching ------------------------------------------------------

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

    # --- helpers ---------------------------------------------------------------------------

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

    # --- status ------------------------------------------------------------------------------

    def _worker_infos(self, now: float) -> list[p.WorkerInfo]:
        infos = []
        for w in self.peers.values():
            if isinstance(w, Worker):
                state = "draining" if w.draining else ("busy" if w.running else "idle")
                use = [p.ResourceUse(name, used, total) for name, used, total in w.holdings.usage()]
                infos.append(p.WorkerInfo(w.name, w.host, state, w.slots, sorted(w.tags), sorted(w.running),
                                          round(now - w.since, 3), w.software, w.pid, use))
        return infos

    def _job_infos(self, now: float, viewer: str) -> list[p.JobInfo]:
        """Every job as ``viewer`` may see it: its own (all of them, for an admin) in
        full; others' without command line, directory, tags or why (which names tags)."""
        infos = []
        for job in sorted(self.jobs.values(), key=lambda j: (-j.priority, j.ticket)):
            state = job.state.value if job.state else "new"
            worker = job.worker.name if job.worker else ""
            seconds = round(now - job.since, 3)
            if self.tenancy.may_see(viewer, job.owner_name):
                spec = p.decode_spec(job.raw_spec)
                infos.append(p.JobInfo(job.job_id, p.readable_argv(spec.argv), state, worker, job.tags, job.priority,
                                       job.attempt, seconds, self._why_waiting(job), job.owner_name,
                                       p.readable(spec.cwd), resources=dict(job.request)))
            else:
                infos.append(p.JobInfo(job.job_id, [], state, worker, [], job.priority, job.attempt, seconds,
                                       "", job.owner_name))
        return infos

    def _why_waiting(self, job: Job) -> str:
        if job.state not in WAITING:
            return ""
        held = self.tenancy.why_held(job.owner_name)
        if held:
            return held
        workers = [w for w in self.peers.values() if isinstance(w, Worker)]
        if not workers:
            return "no worker is connected"
        able = [w for w in workers if job.tag_key <= w.tags]
        if not able:
            return f"no connected worker has tags {','.join(sorted(job.tag_key))}"
        if all(w.draining for w in able):
            return "every worker that could run it is draining"
        able = [w for w in able if not w.draining]
        why = r.why_waiting(job.request, [w.holdings for w in able])
        reserved = self.scheduler.reserved_for(job)
        if reserved is not None:
            return f"{why or 'waiting'}; worker {reserved.name} is held for it until enough is free"
        return why or "every worker that could run it is busy"

    def _never_fits(self, job: Job) -> str:
        """Why no connected worker could ever run ``job`` ('' if one could, or none is connected)."""
        if job.request is r.DEFAULT_REQUEST:
            return ""
        kind = (job.tag_key, job.request)
        why = self._never_fits_cache.get(kind)
        if why is None:
            able = [w.holdings for w in self.peers.values() if isinstance(w, Worker) and job.tag_key <= w.tags]
            why = self._never_fits_cache[kind] = r.never_fits(job.request, able) if able else ""
        return why


def _pools(hello: p.WorkerHello, slots: int) -> list[r.Pool]:
    """A worker's pools as it declared them (cpus: its slots unless declared)."""
    pools = {r.CPUS: r.Pool(r.CPUS, slots)}
    for pool in hello.resources[:r.MAX_POOLS]:
        if pool.total >= 0 and pool.name and len(pool.name) <= r.MAX_NAME:
            pools[pool.name] = r.Pool(pool.name, pool.total, tuple(dict.fromkeys(pool.items[:r.MAX_ITEMS])))
    return list(pools.values())


def _kind(message: p.Message) -> str:
    """A message's name as peers know it (the server's relayed views are Input and Output)."""
    return type(message).__name__.removeprefix("Relayed")


def _valid_signal(signum: int) -> bool:
    return 0 < signum < _signal.NSIG


def _validate_submit(msg: p.Submit) -> str:
    """Why this submission is refused ('' if it is fine)."""
    if not msg.job_id or len(msg.job_id) > MAX_JOB_ID or not msg.job_id.isprintable():
        return f"job id must be 1 to {MAX_JOB_ID} printable characters"
    spec = msg.spec
    if not spec.argv or not spec.argv[0]:
        return "empty command line"
    size = sum(len(a) + 1 for a in spec.argv) + sum(len(k) + len(v) + 2 for k, v in spec.env.items())
    if size > MAX_EXEC_BYTES:
        return f"arguments and environment longer than {MAX_EXEC_BYTES} bytes (the most Linux runs)"
    if not (0 <= spec.rows <= MAX_TERMINAL and 0 <= spec.cols <= MAX_TERMINAL):
        return f"terminal size must be 0 to {MAX_TERMINAL}"
    if spec.max_attempts < 1:
        return "max_attempts must be at least 1"
    if spec.timeout is not None and not (0 < spec.timeout < float("inf")):
        return "timeout must be a positive number of seconds"
    if spec.stage and len(spec.stage) != 32:
        return "stage must be a 32-byte digest"
    texts = [*spec.argv, spec.cwd, *spec.env, *spec.env.values()]
    if any(b"\0" in t for t in texts) or any(b"=" in k or not k for k in spec.env):
        return "NUL byte in the command line, directory or environment, or a bad variable name"
    if spec.cwd.startswith(b"/") == bool(spec.stage):  # a staged job's is relative to its tree
        return "the directory must be an absolute path (relative to the staged tree with --stage)"
    if any(fd not in (0, 1, 2) for fd in spec.closed_fds) or not all(_valid_signal(s) for s in
                                                                       (*spec.ignored_signals, *spec.blocked_signals)):
        return "closed_fds must be among 0, 1, 2, and signals valid signal numbers"
    if not -1 <= spec.umask <= 0o777:
        return "umask must be 0 to 0o777 (or -1)"
    problem = r.request_problem(spec.resources)
    if problem:
        return problem
    if msg.attempt < 0 or msg.ticket < 0 or any(o < 0 for o in msg.offsets) or len(msg.offsets) != 2:
        return "negative attempt, ticket or offset"
    return ""
