"""What happened, as typed records: the broker's and the autoscaler's output
besides messages.  The server's shell logs them (one line each, named by
``kind``), counts them for Prometheus and feeds the autoscaler from them;
nothing downstream parses prose or reads the broker's internals.

A record's log fields are its fields, in order; a field listed in
``OPTIONAL`` is left out of the line while it is empty.  Records are frozen
msgspec structs: the broker makes three per job, and a frozen dataclass costs
several times more to make.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True):
    #: The event's name in the log (``job-started``...).
    kind: ClassVar[str] = ""
    #: Fields left out of the log line while empty.
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def fields(self) -> dict[str, Any]:
        optional = self.OPTIONAL
        return {name: value for name in self.__struct_fields__
                if (value := getattr(self, name)) or name not in optional}


# --- peers ---------------------------------------------------------------------------------


class ClientJoined(Event, frozen=True):
    kind: ClassVar[str] = "client-joined"
    client: str
    host: str
    pid: int
    #: Its owner: a CURVE key's name, a Unix user (ipc), or "local" (see jobqueue.tenancy).
    owner: str = ""


class ClientLeft(Event, frozen=True):
    """The client said goodbye; ``jobs`` of its were still open (dropped or killed)."""

    kind: ClassVar[str] = "client-left"
    client: str
    jobs: int


class ClientLost(Event, frozen=True):
    """The client went silent; its open jobs are dropped or killed."""

    kind: ClassVar[str] = "client-lost"
    client: str
    jobs: int


class WorkerJoined(Event, frozen=True):
    kind: ClassVar[str] = "worker-joined"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"spawn"})
    worker: str
    host: str
    slots: int
    tags: list[str]
    #: The --spawn id it reported (autoscaling: the spawn has arrived).
    spawn: str = ""


class WorkerLeft(Event, frozen=True):
    kind: ClassVar[str] = "worker-left"
    worker: str
    reason: str


class WorkerLost(Event, frozen=True):
    kind: ClassVar[str] = "worker-lost"
    worker: str
    silent: float


class WorkerDraining(Event, frozen=True):
    kind: ClassVar[str] = "worker-draining"
    worker: str


class Rejected(Event, frozen=True):
    """A message or peer refused (bad input, wrong role, not its job...)."""

    kind: ClassVar[str] = "rejected"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"owner"})
    peer: str
    why: str
    #: Whose request it was (the audit trail of refusals).
    owner: str = ""


# --- jobs -----------------------------------------------------------------------------------


class JobQueued(Event, frozen=True):
    kind: ClassVar[str] = "job-queued"
    job: str
    client: str
    priority: int
    tags: list[str]
    owner: str = ""


class JobStarted(Event, frozen=True):
    kind: ClassVar[str] = "job-started"
    job: str
    worker: str
    attempt: int
    #: Seconds it waited in the queue.
    waited: float


class JobFinished(Event, frozen=True):
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


class JobSignal(Event, frozen=True):
    kind: ClassVar[str] = "job-signal"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"by"})
    job: str
    worker: str
    signal: int
    #: Who sent it with jobqueue cancel (empty: the job's own client).
    by: str = ""


class JobRequeued(Event, frozen=True):
    kind: ClassVar[str] = "job-requeued"
    job: str
    attempt: int
    why: str


class JobCancelled(Event, frozen=True):
    kind: ClassVar[str] = "job-cancelled"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"by"})
    job: str
    signal: int
    waited: float
    #: Who cancelled it with jobqueue cancel (empty: the job's own client).
    by: str = ""


class JobLost(Event, frozen=True):
    kind: ClassVar[str] = "job-lost"
    job: str
    why: str


# --- tenancy (owners, admins, keys) -------------------------------------------------------


class DrainRequested(Event, frozen=True):
    """An admin asked (jobqueue drain) that a worker take no more jobs."""

    kind: ClassVar[str] = "drain-requested"
    worker: str
    by: str


class ClientRevoked(Event, frozen=True):
    """The client's key was removed from the key files (SIGHUP): its queued jobs
    are dropped and its running ones killed."""

    kind: ClassVar[str] = "client-revoked"
    client: str
    owner: str
    jobs: int


class WorkerRevoked(Event, frozen=True):
    """The worker's key was removed (or may no longer advertise its tags): it is
    disconnected and its jobs requeued."""

    kind: ClassVar[str] = "worker-revoked"
    worker: str
    why: str


# --- autoscaling ------------------------------------------------------------------------------


class SpawnArrived(Event, frozen=True):
    kind: ClassVar[str] = "spawn-arrived"
    spawn: str
    #: Seconds from launching its command to its worker's hello.
    after: float


class SpawnFailed(Event, frozen=True):
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
