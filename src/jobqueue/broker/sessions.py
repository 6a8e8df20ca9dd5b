"""Sessions: hellos, roles, pings and goodbyes, and re-attachment after a restart
(what workers and clients say they still hold or ran)."""

from __future__ import annotations

from .. import events as ev
from .. import protocol as p
from .. import resources as r
from ..jobstate import WAITING, JobEvent, JobState
from ..model import Client, Job, Worker
from .base import BrokerBase
from .validate import _kind


class SessionsMixin(BrokerBase):
    # --- hellos and roles --------------------------------------------------------------------

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

    # --- re-attachment after a restart -------------------------------------------------------

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

    def _move_peer(self, peer: Client | Worker, identity: bytes) -> None:
        """A known session reconnected on a new connection."""
        if peer.identity != identity:
            self.peers.pop(peer.identity, None)
            self._last_seen.pop(peer.identity, None)
            self._unreachable.pop(peer.identity, None)
            peer.identity = identity
            self.peers[identity] = peer

    # --- welcome, ping, bye ------------------------------------------------------------------

    def _welcome(self, peer: bytes) -> None:
        self._send(peer, p.Welcome(self.server_id, self.heartbeat, self.liveness))

    def _on_ping(self, peer: Client | Worker, _: p.Ping, now: float) -> None:
        self._send(peer.identity, p.Pong())

    def _on_bye(self, client: Client, _: p.Bye, now: float) -> None:
        self._forget_client(client, now, ev.ClientLeft)


def _pools(hello: p.WorkerHello, slots: int) -> list[r.Pool]:
    """A worker's pools as it declared them (cpus: its slots unless declared)."""
    pools = {r.CPUS: r.Pool(r.CPUS, slots)}
    for pool in hello.resources[:r.MAX_POOLS]:
        if pool.total >= 0 and pool.name and len(pool.name) <= r.MAX_NAME:
            pools[pool.name] = r.Pool(pool.name, pool.total, tuple(dict.fromkeys(pool.items[:r.MAX_ITEMS])))
    return list(pools.values())
