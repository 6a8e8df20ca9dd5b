"""A job's lifecycle, as one table (in the manner of h11's ``_state.py``).

Every legal move of a job in the broker is a row of :data:`TRANSITIONS`;
any other (state, event) pair is a bug or a hostile peer and raises
:class:`IllegalTransition`.  The broker never assigns ``Job.state`` directly.
"""

from __future__ import annotations

import enum


class FastEnum(enum.Enum):
    """An Enum hashed by identity (its members are singletons): Enum's own ``__hash__``
    is Python code, and the state tables are looked up on every job's hot path."""

    __hash__ = object.__hash__


class JobState(FastEnum):
    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # assigned to a worker (or re-attached after a server restart)
    REQUEUED = "requeued"  # waiting again after its worker was lost
    FINISHED = "finished"  # ended; kept until its client releases it
    CANCELLED = "cancelled"  # removed from the queue before it ran
    LOST = "lost"  # given up: client gone, or worker lost too often


class JobEvent(FastEnum):
    SUBMIT = "submit"  # a client queues a job
    REATTACH = "reattach"  # after a server restart: a client or worker reports it running (or ran)
    ASSIGN = "assign"  # the broker gives it to a ready worker
    REJECT = "reject"  # the worker had no free slot after all: back to the queue head
    WORKER_LOST = "worker-lost"  # worker silent, or left politely: run it again
    FINISH = "finish"  # the worker reports the end
    CANCEL = "cancel"  # the client (or jobqueue cancel) cancels a waiting job
    CLIENT_LOST = "client-lost"  # the client is gone: drop or kill the job
    GIVE_UP = "give-up"  # worker lost max_attempts times, or cannot be re-attached


S, E = JobState, JobEvent

#: (state, event) -> next state.  ``None`` is "not yet known to the broker".
TRANSITIONS: dict[tuple[JobState | None, JobEvent], JobState] = {
    (None, E.SUBMIT): S.QUEUED,
    (None, E.REATTACH): S.RUNNING,
    (S.QUEUED, E.ASSIGN): S.RUNNING,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    # After a restart: its client re-queued it, not knowing it had started; its worker says it runs.
    (S.QUEUED, E.REATTACH): S.RUNNING,
    (S.REQUEUED, E.REATTACH): S.RUNNING,
    (S.QUEUED, E.CLIENT_LOST): S.LOST,
    (S.REQUEUED, E.ASSIGN): S.RUNNING,
    (S.REQUEUED, E.CANCEL): S.CANCELLED,
    (S.REQUEUED, E.CLIENT_LOST): S.LOST,
    (S.RUNNING, E.REJECT): S.QUEUED,
    (S.RUNNING, E.WORKER_LOST): S.REQUEUED,
    (S.RUNNING, E.FINISH): S.FINISHED,
    (S.RUNNING, E.CLIENT_LOST): S.LOST,
    (S.RUNNING, E.GIVE_UP): S.LOST,
    (S.FINISHED, E.CLIENT_LOST): S.FINISHED,
}

#: States in which the job waits in the queue.
WAITING = frozenset({S.QUEUED, S.REQUEUED})
#: States after which the job never runs again.
TERMINAL = frozenset({S.FINISHED, S.CANCELLED, S.LOST})


class IllegalTransition(Exception):
    def __init__(self, job_id: str, state: JobState | None, event: JobEvent) -> None:
        name = state.value if state else "new"
        super().__init__(f"job {job_id}: event {event.value!r} is not allowed in state {name!r}")


def next_state(job_id: str, state: JobState | None, event: JobEvent) -> JobState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(job_id, state, event) from None
