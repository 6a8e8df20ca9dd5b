"""The pieces the observer keeps (pure data, no broker): one interval of the series,
a started or ended job, the output ring of a job, a tail watcher's window, and the
helpers that make views small (argv without decoding the environment, pages)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import protocol as p

#: Finished jobs kept for the dashboard.
HISTORY = 1000
#: Seconds per point of the series, and how many points (one hour).
INTERVAL = 10.0
POINTS = 360
#: Least seconds between two pushes of changes to the watchers.
PUSH_EVERY = 0.5
#: Output bytes kept per job (both streams together) while someone watches.
TAIL_KEEP = 64 * 1024
#: Unacknowledged output bytes a tail watcher may have before chunks are skipped for it.
TAIL_WINDOW = 256 * 1024
#: Output kept for all running jobs together; past it, only tailed jobs keep theirs.
RINGS_TOTAL = 64 << 20
#: Output kept for finished jobs (the most recent ones), all together.
ENDED_TAILS_TOTAL = 16 << 20
#: Items per WatchState/Changes page (a message stays far below 1 MiB).
PAGE = 500
#: A command line in a list view is cut at this many characters.
ARGV_SHOWN = 400
#: Workers that left or were lost, kept for new watchers.
DEPARTED = 100
#: Queue-wait samples kept per interval (a uniform sample beyond that).
WAIT_SAMPLES = 2048


@dataclass(slots=True)
class Interval:
    start: float
    queued: int
    running: int
    finished: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    seen: int = 0

    def wait(self, seconds: float) -> None:
        self.seen += 1
        if len(self.waits) < WAIT_SAMPLES:
            self.waits.append(seconds)
        else:  # a deterministic spread over the interval's samples
            slot = (self.seen * 2654435761) % self.seen
            if slot < WAIT_SAMPLES:
                self.waits[slot] = seconds

    def point(self, wall_offset: float) -> p.SeriesPoint:
        waits = sorted(self.waits)
        return p.SeriesPoint(round(self.start + wall_offset, 3), self.queued, self.running, dict(self.finished),
                             quantile(waits, 0.5), quantile(waits, 0.95))


def quantile(values: list[float], q: float) -> float:
    if not values:
        return -1.0
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


#: One step of a job's timeline after it was queued, as facts: when (wall clock), what,
#: and its detail as a ``str.format`` template and its arguments.  The detail is made
#: only when someone looks at the job (:func:`timeline`): most jobs never are.
Step = tuple[float, str, str, tuple[Any, ...]]


def timeline(queued: float, steps: list[Step]) -> list[p.TimelineEntry]:
    """A job's timeline as shown: queued at ``queued`` (wall clock), then its steps."""
    return [p.TimelineEntry(queued, "queued", ""),
            *(p.TimelineEntry(at, what, template.format(*args)) for at, what, template, args in steps)]


# Run and Ended are structs, not dataclasses: one of each is made per job (a third of the cost).
class Run(msgspec.Struct):
    queued: float  # wall clock
    started: float | None = None  # broker clock
    steps: list[Step] = []  # a new list per run


class Ended(msgspec.Struct):
    """A job that ended: enough to show it (its argv decoded only when shown)."""

    job_id: str
    raw_spec: bytes
    tags: list[str]
    worker: str
    attempt: int
    queued: float
    started: float
    ended: float
    steps: list[Step]
    status: int = 0
    reason: str = ""
    outcome: str = ""
    _view: p.Outcome | None = None

    def view(self) -> p.Outcome:
        if self._view is None:
            argv = argv_of(self.raw_spec) if self.raw_spec else []
            self._view = p.Outcome(self.job_id, argv, self.tags, self.worker, self.attempt, self.status,
                                   self.reason, self.outcome, self.queued, self.started, self.ended)
        return self._view


class Ring:
    """The last :data:`TAIL_KEEP` bytes of one attempt's output, as (fd, offset, bytes) chunks."""

    __slots__ = ("attempt", "chunks", "size")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.chunks: deque[tuple[int, int, bytes]] = deque()
        self.size = 0

    def add(self, fd: int, offset: int, data: memoryview) -> int:
        """Keep ``data``; returns the change of size."""
        before = self.size
        if len(data) > TAIL_KEEP:
            offset += len(data) - TAIL_KEEP
            data = data[-TAIL_KEEP:]
        self.chunks.append((fd, offset, bytes(data)))
        self.size += len(data)
        while self.size > TAIL_KEEP:
            first_fd, first_offset, first = self.chunks[0]
            excess = self.size - TAIL_KEEP
            if excess >= len(first):
                self.chunks.popleft()
                self.size -= len(first)
            else:
                self.chunks[0] = (first_fd, first_offset + excess, first[excess:])
                self.size -= excess
        return self.size - before


class TailSub:
    """One watcher following one job: what it has not acknowledged yet, per stream."""

    __slots__ = ("attempt", "pending", "outstanding", "skipped")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.pending: dict[int, deque[tuple[int, int]]] = {p.STDOUT: deque(), p.STDERR: deque()}
        self.outstanding = 0
        self.skipped = 0

    def admit(self, attempt: int, fd: int, end: int, size: int) -> bool:
        """Whether a chunk may go to this watcher now (else it is skipped for it)."""
        if attempt != self.attempt:
            self.__init__(attempt)  # type: ignore[misc]  # a new attempt: its output starts again
        if self.outstanding + size > TAIL_WINDOW:
            self.skipped += size
            return False
        self.pending[fd].append((end, size))
        self.outstanding += size
        return True

    def ack(self, attempt: int, fd: int, offset: int) -> None:
        queue = self.pending.get(fd)
        if attempt != self.attempt or queue is None:
            return
        while queue and queue[0][0] <= offset:
            self.outstanding -= queue.popleft()[1]


class _SpecHead(msgspec.Struct, array_like=True):
    """The first field of an encoded :class:`~jobqueue.protocol.JobSpec` (the rest is
    skipped, not decoded: the environment is most of a spec's bytes)."""

    argv: list[bytes]


_head_decoder = msgspec.msgpack.Decoder(_SpecHead)


def argv_of(raw_spec: bytes) -> list[str]:
    """A job's command line, for a list (cut short), from its encoded spec."""
    return short_argv(p.readable_argv(_head_decoder.decode(raw_spec).argv))


def short_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    left = ARGV_SHOWN
    for arg in argv:
        if len(arg) >= left:
            out.append(arg[:left] + "…")
            break
        out.append(arg)
        left -= len(arg) + 1
    return out


def bin_payload(raw: Any) -> memoryview:
    """The bytes of a MessagePack bin (checked by the broker), without copying them."""
    view = memoryview(raw)
    head = view[0]
    skip = 2 if head == 0xC4 else 3 if head == 0xC5 else 5
    return view[skip:]


def pages(*lists: list[Any]) -> Iterator[tuple[list[Any], ...]]:
    """Split the lists side by side into pages of at most :data:`PAGE` items each (at least one page)."""
    chunks = [[items[i:i + PAGE] for i in range(0, len(items), PAGE)] for items in lists]
    count = max(1, *(len(c) for c in chunks))
    for page in itertools.islice(itertools.count(), count):
        yield tuple(c[page] if page < len(c) else [] for c in chunks)
