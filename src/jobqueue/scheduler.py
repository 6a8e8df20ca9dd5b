"""The queue and the matching of jobs to workers (pure; the broker drives it).

Jobs wait in one heap per *kind* (tag set, request, and the partition a policy
such as tenancy's puts them in): jobs of a kind are interchangeable for
fitting, so only each heap's head need be looked at.  A
worker with room (a free slot and a free CPU) is *ready*; ready workers are
served longest-ready first, and each takes the best job that fits it: priority,
then first-in first-out.

Only two events can make a new match: a worker's room grew (a job ended, it
joined), or a kind that had no waiting job gets one.  :meth:`Scheduler.dispatch`
looks at those and nothing else, so the cost of a match does not grow with the
queue or with the number of workers that stay full.

No starvation: jobs that fit may overtake a job that does not (a 2-GPU job
behind a stream of 1-GPU jobs), but only for ``reserve_after`` seconds.  After
that, the first worker that could ever run it and is looked at (one that frees
resources) is reserved for it: that worker starts no job ranked after it, so its
jobs drain until the waiting job fits.  Other workers go on serving the rest.
A job holds one reservation at a time; it moves when its worker leaves or drains.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from .jobstate import WAITING
from .model import Job, Signature, Worker
from .resources import RESERVE_AFTER, Allocation, Request

#: (-priority, ticket, heap sequence, job id): the heap order is the queue order.
Entry = tuple[int, int, int, str]
#: Jobs of a kind are interchangeable for fitting: tag set, request, and the partition
#: a policy puts them in (see :attr:`Scheduler.partition`; "" by default).
Kind = tuple[frozenset[str], Request, str]
_LAST: Entry = (0, 1 << 62, 0, "")


class Scheduler:
    def __init__(self, jobs: dict[str, Job], reserve_after: float = RESERVE_AFTER) -> None:
        self.jobs = jobs
        self.reserve_after = reserve_after
        self._queues: dict[Kind, list[Entry]] = {}
        #: Workers with room, grouped by what they have free (workers of a group fit the
        #: same jobs): a new kind of job is offered to groups, not to each worker.
        self._groups: dict[Signature, dict[Worker, None]] = {}
        #: Workers whose room grew since the last dispatch.
        self._fresh: dict[Worker, None] = {}
        #: Kinds that got a job while they had none waiting.
        self._dirty: set[Kind] = set()
        self._heap_seq = itertools.count(1)
        self._ready_seq = itertools.count(1)
        # Hooks for a policy over the plain order (e.g. per-owner limits and fair share):
        #: which partition of its kind a job waits in (each partition is its own heap);
        self.partition: Callable[[Job], str] = _no_partition
        #: whether this job (the head of its heap) may start now;
        self.may_start: Callable[[Job], bool] = _always
        #: the order among the heads that could start (default: priority, then ticket).
        self.rank: Callable[[Job, Entry], tuple[Any, ...]] | None = None

    # --- inputs ---------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        job.heap_seq = next(self._heap_seq)
        kind = (job.tag_key, job.request, self.partition(job))
        heap = self._queues.get(kind)
        if heap is None:
            heap = self._queues[kind] = []
        if self._head(kind) is None:
            self._dirty.add(kind)
        heapq.heappush(heap, (-job.priority, job.ticket, job.heap_seq, job.job_id))

    def clear_queues(self) -> None:
        """Forget every waiting job (the caller queues them again, e.g. in new partitions)."""
        self._queues.clear()
        self._dirty.clear()

    def refresh(self, worker: Worker) -> None:
        """``worker``'s room or state changed (a job ended, it joined, drains or left)."""
        was_ready = worker.signature is not None
        self._regroup(worker)
        if worker.signature is None:
            self._fresh.pop(worker, None)
            return
        if not was_ready:
            worker.ready_seq = next(self._ready_seq)
        self._fresh[worker] = None

    def reconsider(self) -> None:
        """Look at every ready worker again (after a policy changed who may start)."""
        for group in self._groups.values():
            self._fresh.update(dict.fromkeys(group))

    @property
    def pending(self) -> bool:
        """Whether :meth:`dispatch` may find a match."""
        return bool(self._fresh or self._dirty)

    @property
    def has_ready(self) -> bool:
        return bool(self._groups)

    @property
    def ready(self) -> dict[Worker, None]:
        """Workers with room, longest-ready first."""
        workers = [w for group in self._groups.values() for w in group]
        return dict.fromkeys(sorted(workers, key=lambda w: w.ready_seq))

    def dispatch(self, now: float, assign: Callable[[Job, Worker, Allocation], None]) -> None:
        """Start every match that has become possible: ``assign`` is told each.

        A worker whose room grew looks at every kind; a kind that got its first
        waiting job is offered to the longest-ready worker it fits, which looks
        at it and at the job it is held for, if any: nothing else changed."""
        fresh, self._fresh = self._fresh, {}
        dirty, self._dirty = self._dirty, set()
        for worker in sorted(fresh, key=_ready_order) if len(fresh) > 1 else fresh:
            self._fill(worker, now, assign, None)
        for kind in sorted(dirty, key=lambda k: self._head(k) or _LAST) if len(dirty) > 1 else dirty:
            skip: set[Worker] = set()
            while self._head(kind) is not None:
                taker = self._longest_ready_fitting(kind, skip)
                if taker is None:
                    break
                kinds = [kind]
                held_for = taker.held_for
                if held_for is not None and held_for.state in WAITING and held_for.reserved_on is taker:
                    kinds.append((held_for.tag_key, held_for.request, self.partition(held_for)))
                if not self._fill(taker, now, assign, kinds):
                    skip.add(taker)

    # --- matching -------------------------------------------------------------------------

    def _longest_ready_fitting(self, kind: Kind, skip: set[Worker]) -> Worker | None:
        tags, request, _ = kind
        best: Worker | None = None
        for (worker_tags, *_), group in self._groups.items():
            if not tags <= worker_tags:
                continue
            for worker in group:  # all alike: the first not skipped decides
                if worker in skip:
                    continue
                if worker.holdings.fits(request) and (best is None or worker.ready_seq < best.ready_seq):
                    best = worker
                break
        return best

    def _fill(self, worker: Worker, now: float, assign: Callable[[Job, Worker, Allocation], None],
              kinds: list[Kind] | None) -> int:
        """Give ``worker`` jobs while one fits; how many it got."""
        given = 0
        while worker.signature is not None:
            job = self._pick(worker, now, kinds)
            if job is None:
                break
            allocation = worker.holdings.take(job.job_id, job.request)
            assign(job, worker, allocation)
            given += 1
            self._regroup(worker)
        return given

    def _regroup(self, worker: Worker) -> None:
        """Move ``worker`` to the group of what it has free now (none: no room)."""
        holdings = worker.holdings
        new: Signature | None = None
        if not (worker.gone or worker.draining) and holdings.has_room():
            new = (worker.tags, holdings.slots - len(holdings.held), tuple(holdings.free.values()))
        old = worker.signature
        if old == new:
            return
        if old is not None:
            group = self._groups[old]
            del group[worker]
            if not group:
                del self._groups[old]
        if new is not None:
            self._groups.setdefault(new, {})[worker] = None
        worker.signature = new

    def _pick(self, worker: Worker, now: float, kinds: list[Kind] | None) -> Job | None:
        """The best waiting job of ``kinds`` (None: all) that fits ``worker`` now, popped from
        its heap, or None (also when a job that waited too long holds the worker back)."""
        holdings = worker.holdings
        candidates: list[tuple[Entry, Kind]] = []
        for kind in list(self._queues) if kinds is None else kinds:
            tags, request, _ = kind
            if tags <= worker.tags and holdings.could_ever(request):
                head = self._head(kind)
                if head is not None:
                    candidates.append((head, kind))
                elif kinds is None:
                    del self._queues[kind]
        rank = self.rank
        if len(candidates) < 2:
            pass
        elif rank is None:
            candidates.sort()
        else:
            candidates.sort(key=lambda c: rank(self.jobs[c[0][3]], c[0]))
        for entry, kind in candidates:
            job = self.jobs[entry[3]]
            if holdings.fits(kind[1]):
                if not self.may_start(job):
                    continue
                heapq.heappop(self._queues[kind])
                return job
            if now - job.since >= self.reserve_after and not _reserved_elsewhere(job, worker) \
                    and self.may_start(job):
                job.reserved_on = worker
                worker.held_for = job
                return None
        return None

    def _head(self, kind: Kind) -> Entry | None:
        """The best still-valid entry of one heap (stale entries are dropped)."""
        heap = self._queues.get(kind)
        while heap:
            entry = heap[0]
            job = self.jobs.get(entry[3])
            if job is not None and job.state in WAITING and job.heap_seq == entry[2]:
                return entry
            heapq.heappop(heap)
        return None

    # --- what status shows ------------------------------------------------------------------

    def reserved_for(self, job: Job) -> Worker | None:
        worker = job.reserved_on
        return worker if worker is not None and not worker.gone and not worker.draining else None


def _reserved_elsewhere(job: Job, worker: Worker) -> bool:
    other = job.reserved_on
    return other is not None and other is not worker and not other.gone and not other.draining


def _ready_order(worker: Worker) -> int:
    return worker.ready_seq


def _always(job: Job) -> bool:
    return True


def _no_partition(job: Job) -> str:
    return ""
