"""What the broker keeps of its peers and jobs (plain records; the broker and
the scheduler change them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protocol as p
from .jobstate import JobState
from .resources import DEFAULT_REQUEST, Holdings, Pool, Request, normalise
from .tenancy import LOCAL, UNKNOWN

#: A worker's tags, free slots and free amounts: workers alike in it fit the same jobs.
Signature = tuple[frozenset[str], int, tuple[int, ...]]


@dataclass(eq=False)
class Peer:
    identity: bytes
    session: str
    name: str
    host: str
    pid: int
    software: str
    since: float
    #: Its owner (client) or key name (worker): see :mod:`jobqueue.tenancy`.
    owner: str = LOCAL


@dataclass(eq=False)
class Client(Peer):
    #: Ids of the jobs it owns (a dict as an ordered set: a third of a set's size).
    jobs: dict[str, None] = field(default_factory=dict)


@dataclass(eq=False)
class Worker(Peer):
    slots: int = 1
    tags: frozenset[str] = frozenset()
    draining: bool = False
    #: Set when the server's --spawn started this worker (autoscaling).
    spawn_id: str = ""
    #: Jobs holding resources here (job id -> attempt), including ones being killed.
    running: dict[str, int] = field(default_factory=dict)
    #: Jobs that ended here but whose client has not released them yet.
    finished: set[str] = field(default_factory=set)
    #: Its resources and what its running jobs hold.
    holdings: Holdings = field(default_factory=lambda: Holdings([Pool("cpus", 1)], 1))
    #: Set once it has left (a reservation on it no longer counts).
    gone: bool = False
    #: The job it is held back for (valid while that job waits and is reserved on it).
    held_for: Job | None = None
    #: What it has free, while it has room (see :mod:`jobqueue.scheduler`); None: no room.
    signature: Signature | None = None
    #: Order in which workers got room: the longest-ready is served first.
    ready_seq: int = 0

    @property
    def free(self) -> int:
        """Jobs of one CPU it could still start."""
        return max(0, min(self.slots - len(self.running), self.holdings.free.get("cpus", 0)))

    def hold(self, job_id: str, attempt: int, request: Request) -> list[p.Grant]:
        """Give ``job_id`` what it asks for (it fits) and return it as the Assign says it."""
        self.running[job_id] = attempt
        allocation = self.holdings.take(job_id, request)
        return [p.Grant(name, amount, list(items)) for name, amount, items in allocation]

    def adopt(self, job_id: str, attempt: int, grants: list[p.Grant]) -> None:
        """A job it says it runs (after a server restart, or one being killed)."""
        self.running[job_id] = attempt
        if job_id not in self.holdings.held:
            allocation = tuple((g.name, g.amount, tuple(g.items)) for g in grants) or DEFAULT_REQUEST_ALLOCATION
            self.holdings.adopt(job_id, allocation)

    def let_go(self, job_id: str) -> int | None:
        """The job no longer holds anything here; its attempt (None if it held nothing)."""
        self.holdings.release(job_id)
        return self.running.pop(job_id, None)


DEFAULT_REQUEST_ALLOCATION = tuple((name, amount, ()) for name, amount in DEFAULT_REQUEST)


@dataclass(eq=False, slots=True)
class Job:
    """A job as the broker keeps it: compact, since a queue may hold 100,000.

    Of its spec only what scheduling reads is decoded (tags, priority, attempts,
    resources); the whole spec stays as encoded for the worker, and is decoded
    only for a status request (:attr:`argv`)."""

    job_id: str
    ticket: int
    owner: Client | None
    since: float
    raw_spec: bytes = b""
    #: Who it belongs to (its client's owner; UNKNOWN until a client claims it after a restart).
    owner_name: str = UNKNOWN
    tags: list[str] = field(default_factory=lambda: NO_TAGS)
    priority: int = 0
    max_attempts: int = 1
    state: JobState | None = None
    attempt: int = 0
    losses: int = 0
    worker: Worker | None = None
    heap_seq: int = 0
    #: Seconds it waited in the queue before its current attempt was assigned.
    waited: float = 0.0
    #: What it asks for (shared between jobs that ask the same).
    request: Request = DEFAULT_REQUEST
    #: The worker held back for it after it waited too long (see :mod:`jobqueue.scheduler`).
    reserved_on: Worker | None = None

    @property
    def tag_key(self) -> frozenset[str]:
        return frozenset(self.tags)

    @property
    def argv(self) -> list[str]:
        """The command line for people (``jobqueue status``)."""
        return p.readable_argv(p.decode_spec(self.raw_spec).argv)

    def keep_spec(self, spec: p.JobSpec) -> None:
        """Keep the spec encoded for the worker, and decoded only what the broker reads."""
        self.raw_spec = p.encode_spec(spec)
        self.tags = spec.tags or NO_TAGS
        self.priority, self.max_attempts = spec.priority, spec.max_attempts
        self.request = normalise(spec.resources)


#: Shared by every job without tags (never mutated): a queued job costs less.
NO_TAGS: list[str] = []
