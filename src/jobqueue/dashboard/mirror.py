"""The dashboard's copy of the server's state, kept up to date from the pushes
(WatchState once, then Changes), and the queries the web pages make of it.

Plain data and pure functions: the link thread applies messages under :attr:`Mirror.lock`,
the web handlers read under it.  Outputs are kept per followed job in a :class:`TailBuffer`.
"""

from __future__ import annotations

import codecs
import heapq
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p

#: Workers that left or were lost stay shown (marked) this long.
DEPARTED_SHOWN = 600.0
#: Finished jobs kept (the server keeps as many).
HISTORY = 1000
#: Output text kept per followed job.
TAIL_BYTES = 256 * 1024
#: Followed jobs whose output is kept after their page closed.
TAILS_KEPT = 20
#: Outcome groups shown on the overview (and their members).
GROUPS: dict[str, tuple[str, ...]] = {
    "success": ("succeeded",),
    "failed": ("nonzero", "failed", "not-found", "not-executable", "lost", "killed", "unknown"),
    "signal": ("signaled",),
    "timeout": ("timeout",),
    "requeued": ("requeued",),
    "cancelled": ("cancelled",),
}
_GROUP_OF = {member: group for group, members in GROUPS.items() for member in members}
ALIVE = ("idle", "busy", "draining")


def group_of(outcome: str) -> str:
    return _GROUP_OF.get(outcome, "failed")


@dataclass
class TailBuffer:
    """A followed job's detail and its output, as numbered chunks of text."""

    job_id: str
    detail: p.JobDetail | None = None
    ended: bool = False
    chunks: deque[dict[str, Any]] = field(default_factory=deque)
    size: int = 0
    seq: int = 0
    truncated: bool = False
    _next: dict[tuple[int, int], int] = field(default_factory=dict)
    _decoders: dict[tuple[int, int], Any] = field(default_factory=dict)

    def add(self, msg: p.Output) -> None:
        key = (msg.attempt, msg.fd)
        if not any(a == msg.attempt for a, _ in self._next) and self._next:
            self._chunk({"attempt": msg.attempt, "note": f"attempt {msg.attempt}: the job runs again from the start"})
        expected = self._next.get(key)
        if expected is not None and msg.offset > expected:
            self._decoders.pop(key, None)
            self._chunk({"fd": msg.fd, "note": f"{msg.offset - expected} bytes skipped (the dashboard fell behind)"})
        elif expected is not None and msg.offset + len(msg.data) <= expected:
            return  # seen already (re-sent after a reconnection)
        elif expected is not None and msg.offset < expected:
            msg = p.Output(msg.job_id, msg.attempt, msg.fd, expected, msg.data[expected - msg.offset:])
        self._next[key] = msg.offset + len(msg.data)
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(msg.data)
        if text:
            self._chunk({"fd": msg.fd, "text": text})

    def _chunk(self, chunk: dict[str, Any]) -> None:
        self.seq += 1
        chunk["seq"] = self.seq
        self.chunks.append(chunk)
        self.size += len(chunk.get("text", ""))
        while self.size > TAIL_BYTES and len(self.chunks) > 1:
            self.size -= len(self.chunks.popleft().get("text", ""))
            self.truncated = True

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [c for c in self.chunks if c["seq"] > seq]


class Mirror:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server_id = ""
        self.software = ""
        self.endpoint = ""
        self.connected = False
        self.problem = ""
        self.interval = 10.0
        self.workers: dict[str, p.WatchedWorker] = {}
        self.jobs: dict[str, p.WatchedJob] = {}
        self.history: deque[p.Outcome] = deque(maxlen=HISTORY)
        self.series: deque[p.SeriesPoint] = deque(maxlen=360)
        #: Outcomes since the last series point (the open interval).
        self.open_counts: dict[str, int] = {}
        #: The server's clock minus ours (its wall-clock times are shown as they are).
        self.skew = 0.0
        self.version = 0
        self.series_version = 0
        self.tails: OrderedDict[str, TailBuffer] = OrderedDict()
        self._staging: p.WatchState | None = None

    # --- applying the server's messages (link thread, under the lock) ----------------------

    def apply(self, msg: Any) -> None:
        if isinstance(msg, p.WatchState):
            self._apply_state(msg)
        elif isinstance(msg, p.Changes):
            self._apply_changes(msg)
        self.version += 1

    def _apply_state(self, page: p.WatchState) -> None:
        if self._staging is None:
            self._staging = p.WatchState(page.server_id, page.software, page.now, page.interval, [], [], [],
                                         page.series, False)
        staging = self._staging
        staging.workers += page.workers
        staging.jobs += page.jobs
        staging.history += page.history
        if not page.last:
            return
        self._staging = None
        self.server_id, self.software, self.interval = staging.server_id, staging.software, staging.interval
        self.skew = staging.now - time.time()
        self.workers = {w.session: w for w in staging.workers}
        self.jobs = {j.job_id: j for j in staging.jobs}
        self.history = deque(staging.history, maxlen=HISTORY)
        self.series = deque(staging.series, maxlen=360)
        self.open_counts = {}
        self.series_version += 1
        self.connected = True

    def _apply_changes(self, msg: p.Changes) -> None:
        self.skew = msg.now - time.time()
        for worker in msg.workers:
            self.workers[worker.session] = worker
        for job_id in msg.gone:
            self.jobs.pop(job_id, None)
        for job in msg.jobs:
            self.jobs[job.job_id] = job
        if msg.series:
            self.series.extend(msg.series)
            self.open_counts = {}
            self.series_version += 1
        for outcome in msg.finished:
            self.history.append(outcome)
            if not msg.series or outcome.ended >= msg.series[-1].start + self.interval:
                self.open_counts[outcome.outcome] = self.open_counts.get(outcome.outcome, 0) + 1
        now = self.now()
        for session in [s for s, w in self.workers.items()
                        if w.state not in ALIVE and now - w.changed > DEPARTED_SHOWN]:
            del self.workers[session]

    def tail(self, job_id: str) -> TailBuffer:
        buffer = self.tails.get(job_id)
        if buffer is None:
            buffer = self.tails[job_id] = TailBuffer(job_id)
        self.tails.move_to_end(job_id)
        return buffer

    def forget_tails(self, keep: set[str]) -> None:
        """Drop the oldest buffers of jobs nobody follows beyond :data:`TAILS_KEPT`."""
        idle = [j for j in self.tails if j not in keep]
        for job_id in idle[:max(0, len(idle) - TAILS_KEPT)]:
            del self.tails[job_id]

    # --- queries (web handlers, under the lock) ----------------------------------------------

    def now(self) -> float:
        """The server's wall clock, as far as we know."""
        return time.time() + self.skew

    def overview(self) -> dict[str, Any]:
        now = self.now()
        alive = [w for w in self.workers.values() if w.state in ALIVE]
        hour = _group_counts(pt.finished for pt in self.series if pt.start >= now - 3600)
        minute = _group_counts(pt.finished for pt in self.series if pt.start >= now - 60)
        for outcome, count in self.open_counts.items():
            group = group_of(outcome)
            hour[group] += count
            minute[group] += count
        running = sum(1 for j in self.jobs.values() if j.state == "running")
        return {
            "server": self.server_id, "version": self.software, "endpoint": self.endpoint,
            "connected": self.connected, "problem": self.problem, "now": now,
            "workers": len(alive), "busy": sum(w.state == "busy" for w in alive),
            "draining": sum(w.state == "draining" for w in alive),
            "lost": sum(w.state == "lost" for w in self.workers.values()),
            "slots": sum(w.slots for w in alive), "used": sum(len(w.jobs) for w in alive),
            "queued": len(self.jobs) - running, "running": running,
            "minute": minute, "hour": hour,
        }

    def chart_data(self) -> dict[str, Any]:
        """Columns for the charts: one row per interval of the last hour."""
        points = list(self.series)
        per_second = [1.0 / self.interval] * len(points)
        # the interval still open, as it is so far: the charts move at every push
        now = self.now()
        start = points[-1].start + self.interval if points else now - self.interval
        if now > start:
            running = sum(1 for j in self.jobs.values() if j.state == "running")
            points.append(p.SeriesPoint(now, len(self.jobs) - running, running, dict(self.open_counts), -1, -1))
            per_second.append(1.0 / max(1.0, now - start))
        groups = {g: [round(_group_counts([pt.finished])[g] * rate, 3) for pt, rate in zip(points, per_second)]
                  for g in GROUPS}
        return {
            "t": [pt.start for pt in points], "interval": self.interval,
            "queued": [pt.queued for pt in points], "running": [pt.running for pt in points],
            "throughput": groups,
            "wait_p50": [None if pt.wait_p50 < 0 else pt.wait_p50 for pt in points],
            "wait_p95": [None if pt.wait_p95 < 0 else pt.wait_p95 for pt in points],
        }

    def workers_page(self, text: str = "", page: int = 0, size: int = 50) -> dict[str, Any]:
        text = text.lower()
        rows = [w for w in self.workers.values()
                if not text or text in w.name.lower() or text in w.host.lower()
                or any(text in t.lower() for t in w.tags) or text == w.state]
        rows.sort(key=lambda w: (w.state not in ALIVE, w.name))
        return _paged([_worker_row(w) for w in rows[page * size:(page + 1) * size]], len(rows), page, size)

    def jobs_page(self, state: str = "", tag: str = "", worker: str = "", text: str = "", page: int = 0,
                  size: int = 50) -> dict[str, Any]:
        text = text.lower()

        def wanted(j: p.WatchedJob | p.Outcome) -> bool:
            return ((not tag or tag in j.tags) and (not worker or worker == j.worker)
                    and (not text or text in " ".join(j.argv).lower() or j.job_id.startswith(text)))

        # running first (longest running first), then waiting (priority, then age), then finished (newest
        # first); only the rows up to the page's end are sorted: 10,000 queued jobs cost a scan, not a sort
        end = (page + 1) * size
        groups: list[list[Any]] = []
        if state in ("", "running"):
            running = [j for j in self.jobs.values() if j.state == "running" and wanted(j)]
            groups.append(heapq.nsmallest(end, running, key=lambda j: j.since))
            total = len(running)
        else:
            total = 0
        if state in ("", "queued"):
            waiting = [j for j in self.jobs.values() if j.state != "running" and wanted(j)]
            groups.append(heapq.nsmallest(end, waiting, key=lambda j: (-j.priority, j.queued)))
            total += len(waiting)
        if state in ("", "finished"):
            ended = [j for j in reversed(self.history) if wanted(j)]
            groups.append(ended)
            total += len(ended)
        rows = [j for group in groups for j in group][page * size:end]
        return _paged([_job_row(j) for j in rows], total, page, size)

    def job_row(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return _job_row(job)
        for outcome in reversed(self.history):
            if outcome.job_id == job_id:
                return _job_row(outcome)
        return None


def _group_counts(finished: Any) -> dict[str, int]:
    counts = dict.fromkeys(GROUPS, 0)
    for by_outcome in finished:
        for outcome, n in by_outcome.items():
            counts[group_of(outcome)] += n
    return counts


def _paged(rows: list[dict[str, Any]], total: int, page: int, size: int) -> dict[str, Any]:
    return {"rows": rows, "total": total, "page": page, "pages": max(1, -(-total // size))}


def _worker_row(w: p.WatchedWorker) -> dict[str, Any]:
    return {"name": w.name, "host": w.host, "state": w.state, "slots": w.slots, "used": len(w.jobs),
            "tags": w.tags, "jobs": w.jobs, "joined": w.joined, "changed": w.changed, "version": w.software,
            "pid": w.pid}


def _job_row(j: p.WatchedJob | p.Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {"id": j.job_id, "argv": j.argv, "tags": j.tags, "worker": j.worker,
                           "attempt": j.attempt, "queued": j.queued}
    if isinstance(j, p.WatchedJob):
        row.update(state=j.state, priority=j.priority, since=j.since, why=j.why)
    else:
        row.update(state=j.outcome, group=group_of(j.outcome), status=j.status, reason=j.reason,
                   started=j.started, ended=j.ended, finished=True)
    return row
