"""Losses: lost and revoked peers, requeueing a lost worker's jobs, giving up on a poison
job, and the jobs of clients that are gone."""

from __future__ import annotations

from collections.abc import Callable

from .. import events as ev
from .. import protocol as p
from ..jobstate import JobEvent, JobState
from ..model import Client, Job, Worker
from .base import BrokerBase


class LossesMixin(BrokerBase):
    def _revoke(self, peer: Client | Worker, why: str, now: float) -> None:
        self._send(peer.identity, p.Refused(why))
        if isinstance(peer, Worker):
            self._event(ev.WorkerRevoked(peer.name, why))
            self._remove_worker(peer, now, counts_as_loss=False, reason=f"worker {peer.name} was revoked")
        else:
            self._forget_client(peer, now, lambda name, jobs: ev.ClientRevoked(name, peer.owner, jobs))

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
