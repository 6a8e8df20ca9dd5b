"""Control requests (status, cancel, drain) and what they report: workers, jobs, and why a job waits."""

from __future__ import annotations

import signal as _signal

from .. import events as ev
from .. import protocol as p
from .. import resources as r
from ..jobstate import TERMINAL, WAITING
from ..model import Job, Worker
from .base import BrokerBase
from .validate import _valid_signal


class StatusMixin(BrokerBase):
    # --- control requests --------------------------------------------------------------------

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
