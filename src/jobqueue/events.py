"""What happened, as typed records: the broker's and the autoscaler's output
besides messages.  The server's shell logs them (one line each, named by
``kind``), counts them for Prometheus and feeds the autoscaler from them;
nothing downstream parses prose or reads the broker's internals.

A record's log fields are its dataclass fields, in order; a field listed in
``OPTIONAL`` is left out of the line while it is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    #: The event's name in the log (``job-started``...).
    kind: ClassVar[str] = ""
    #: Fields left out of the log line while empty.
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def fields(self) -> dict[str, Any]:
        # A slots dataclass lists its fields in __slots__, in order: cheaper than
        # dataclasses.fields() on the server's hot path (three events per job).
        optional = self.OPTIONAL
        names: tuple[str, ...] = type(self).__slots__
        return {name: value for name in names if (value := getattr(self, name)) or name not in optional}


# --- peers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientJoined(Event):
    kind: ClassVar[str] = "client-joined"
    client: str
    host: str
    pid: int
    #: Its owner: a CURVE key's name, a Unix user (ipc), or "local" (see jobqueue.tenancy).
    owner: str = ""


@dataclass(frozen=True, slots=True)
class ClientLeft(Event):
    """The client said goodbye; ``jobs`` of its were still open (dropped or killed)."""

    kind: ClassVar[str] = "client-left"
    client: str
    jobs: int


@dataclass(frozen=True, slots=True)
class ClientLost(Event):
    """The client went silent; its open jobs are dropped or killed."""

    kind: ClassVar[str] = "client-lost"
    client: str
    jobs: int


@dataclass(frozen=True, slots=True)
class WorkerJoined(Event):
    kind: ClassVar[str] = "worker-joined"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"spawn"})
    worker: str
    host: str
    slots: int
    tags: list[str]
    #: The --spawn id it reported (autoscaling: the spawn has arrived).
    spawn: str = ""


@dataclass(frozen=True, slots=True)
class WorkerLeft(Event):
    kind: ClassVar[str] = "worker-left"
    worker: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerLost(Event):
    kind: ClassVar[str] = "worker-lost"
    worker: str
    silent: float


@dataclass(frozen=True, slots=True)
class WorkerDraining(Event):
    kind: ClassVar[str] = "worker-draining"
    worker: str


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    """A message or peer refused (bad input, wrong role, not its job...)."""

    kind: ClassVar[str] = "rejected"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"owner"})
    peer: str
    why: str
    #: Whose request it was (the audit trail of refusals).
    owner: str = ""


# --- jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobQueued(Event):
    kind: ClassVar[str] = "job-queued"
    job: str
    client: str
    priority: int
    tags: list[str]
    owner: str = ""


@dataclass(frozen=True, slots=True)
class JobStarted(Event):
    kind: ClassVar[str] = "job-started"
    job: str
    worker: str
    attempt: int
    #: Seconds it waited in the queue.
    waited: float


@dataclass(frozen=True, slots=True)
class JobFinished(Event):
    kind: ClassVar[str] = "job-finished"
    job: str
    worker: str
    status: int
    reason: str
    #: Seconds it ran.
    ran: float

    @property
    def outcome(self) -> str:
        """``succeeded``, ``nonzero`` or the reason (signaled, timeout, not-found...)."""
        if self.reason == "exited":
            return "succeeded" if self.status == 0 else "nonzero"
        return self.reason or "unknown"


@dataclass(frozen=True, slots=True)
class JobSignal(Event):
    kind: ClassVar[str] = "job-signal"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"by"})
    job: str
    worker: str
    signal: int
    #: Who sent it with jobqueue cancel (empty: the job's own client).
    by: str = ""


@dataclass(frozen=True, slots=True)
class JobRequeued(Event):
    kind: ClassVar[str] = "job-requeued"
    job: str
    attempt: int
    why: str


@dataclass(frozen=True, slots=True)
class JobCancelled(Event):
    kind: ClassVar[str] = "job-cancelled"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"by"})
    job: str
    signal: int
    waited: float
    #: Who cancelled it with jobqueue cancel (empty: the job's own client).
    by: str = ""


@dataclass(frozen=True, slots=True)
class JobLost(Event):
    kind: ClassVar[str] = "job-lost"
    job: str
    why: str


# --- tenancy (owners, admins, keys) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainRequested(Event):
    """An admin asked (jobqueue drain) that a worker take no more jobs."""

    kind: ClassVar[str] = "drain-requested"
    worker: str
    by: str


@dataclass(frozen=True, slots=True)
class ClientRevoked(Event):
    """The client's key was removed from the key files (SIGHUP): its queued jobs
    are dropped and its running ones killed."""

    kind: ClassVar[str] = "client-revoked"
    client: str
    owner: str
    jobs: int


@dataclass(frozen=True, slots=True)
class WorkerRevoked(Event):
    """The worker's key was removed (or may no longer advertise its tags): it is
    disconnected and its jobs requeued."""

    kind: ClassVar[str] = "worker-revoked"
    worker: str
    why: str


# --- autoscaling ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnArrived(Event):
    kind: ClassVar[str] = "spawn-arrived"
    spawn: str
    #: Seconds from launching its command to its worker's hello.
    after: float


@dataclass(frozen=True, slots=True)
class SpawnFailed(Event):
    kind: ClassVar[str] = "spawn-failed"
    spawn: str
    why: str
    #: Seconds of back-off before the next spawn.
    retry_in: float


def outcome(event: Event) -> str | None:
    """The Prometheus ``outcome`` of a job-ending event (None: not an end)."""
    if isinstance(event, JobFinished):
        return event.outcome
    if isinstance(event, JobCancelled):
        return "cancelled"
    if isinstance(event, JobLost):
        return "lost"
    return None
