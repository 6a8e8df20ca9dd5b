"""A job run's lifecycle on a worker, as one table (in the manner of :mod:`jobqueue.jobstate`).

Every legal move of a run is a row of :data:`TRANSITIONS`; any other
(state, event) pair is a bug and raises :class:`IllegalTransition`.  Only
``WorkerCore._transition`` assigns ``Run.state``; a run that leaves the table
(``None``) is forgotten by the worker.

Room left for later issues (not implemented):

- staging (issue 13): a ``STAGING`` state before ``STARTING`` (inputs being
  fetched), entered by the assignment, left by ``STAGED`` (→ ``STARTING``) or
  ``STAGE_FAILED`` (→ ``FINISHED``); a stop or a server Kill while staging
  would forget the run, as nothing runs yet.
- resources (issue 14): a run holds resources (GPUs, memory) from the
  assignment until it leaves the table; ``_transition`` is the one place that
  sees a run leave, so that is where they would be given back.
"""

from __future__ import annotations

import enum


class RunState(enum.Enum):
    STARTING = "starting"  # accepted; the shell is spawning its process
    RUNNING = "running"  # its process runs
    KILLING = "killing"  # SIGTERM sent to its group; SIGKILL due at Run.kill_at (None once sent)
    DRAINING = "draining"  # its process was reaped; reading the rest of its output to EOF
    HELD = "held"  # ended by a signal from outside: the end waits OUTSIDE_SIGNAL_HOLD (a stop may follow)
    FINISHED = "finished"  # its end was reported; kept until the server releases it


class RunEvent(enum.Enum):
    SPAWNED = "spawned"  # the shell started its process
    SPAWN_FAILED = "spawn-failed"  # no such directory or program, not executable...
    TERMINATE = "terminate"  # SIGTERM sent (server Kill, --timeout, worker stopping)
    KILL_DUE = "kill-due"  # the grace is over: SIGKILL sent
    EXITED = "exited"  # the shell reaped its process
    HOLD = "hold"  # output drained, but a signal from outside ended it
    FINISH = "finish"  # output drained (and any hold over): its end is reported
    RELEASE = "release"  # the server has the end: forget the run
    FORGET = "forget"  # dropped unreported: the worker is stopping, or the server killed a finished run


S, E = RunState, RunEvent

#: (state, event) -> next state; ``None`` is "forgotten".
TRANSITIONS: dict[tuple[RunState, RunEvent], RunState | None] = {
    (S.STARTING, E.SPAWNED): S.RUNNING,
    (S.STARTING, E.SPAWN_FAILED): S.FINISHED,
    (S.RUNNING, E.TERMINATE): S.KILLING,
    (S.RUNNING, E.EXITED): S.DRAINING,
    (S.KILLING, E.KILL_DUE): S.KILLING,
    (S.KILLING, E.EXITED): S.DRAINING,
    (S.DRAINING, E.HOLD): S.HELD,
    (S.DRAINING, E.FINISH): S.FINISHED,
    (S.DRAINING, E.FORGET): None,
    (S.HELD, E.FINISH): S.FINISHED,
    (S.HELD, E.FORGET): None,
    (S.FINISHED, E.RELEASE): None,
    (S.FINISHED, E.FORGET): None,
}

#: States in which the run's process may still be alive (it can be signalled).
ALIVE = frozenset({S.RUNNING, S.KILLING})
#: States in which the run's process has been reaped.
EXITED = frozenset({S.DRAINING, S.HELD, S.FINISHED})


class IllegalTransition(Exception):
    def __init__(self, job_id: str, state: RunState, event: RunEvent) -> None:
        super().__init__(f"run of job {job_id}: event {event.value!r} is not allowed in state {state.value!r}")


def next_state(job_id: str, state: RunState, event: RunEvent) -> RunState | None:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(job_id, state, event) from None
