"""The messages about a job: from its client (submit, input, acks, close-output, resize,
signal, release) and from its worker (started, output, acks, finished, reject, goodbye, drain),
and the staging relays (jq --stage)."""

from __future__ import annotations

from .. import events as ev
from .. import protocol as p
from ..jobstate import WAITING, JobEvent, JobState
from ..model import Client, Job, Worker
from ..tenancy import UNKNOWN
from .base import BrokerBase, Frame
from .validate import MAX_TERMINAL, _valid_signal, _validate_submit


class RelayMixin(BrokerBase):
    # --- client messages ---------------------------------------------------------------------

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

    def _claim(self, job: Job, owner: str) -> None:
        """A job known only from its worker (after a restart) is claimed by its client."""
        self.tenancy.moved(job.owner_name, job.state, None)
        job.owner_name = owner
        self.tenancy.moved(owner, None, job.state)

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

    # --- worker messages ---------------------------------------------------------------------

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
