"""A job run's lifecycle on a worker, as one table (in the manner of :mod:`jobqueue.jobstate`).

:class:`Run` is the record of one run; every legal move of a run is a row of :data:`TRANSITIONS`; any other
(state, event) pair is a bug and raises :class:`IllegalTransition`.  Only
``WorkerCore._transition`` assigns ``Run.state``; a run that leaves the table
(``None``) is forgotten by the worker.

Staging (``jq --stage``, :mod:`jobqueue.staging`): a staged run starts in
``STAGING`` (its tree's blobs arriving), goes on to ``STARTING`` once its
private directory is built, and after its process ended goes through
``FETCHING`` (its results going back to the client) before ``FINISHED``.  A
stop or a server Kill while staging forgets it: nothing runs yet.

Room left for later issues (not implemented):

- resources (issue 14): a run holds resources (GPUs, memory) from the
  assignment until it leaves the table; ``_transition`` is the one place that
  sees a run leave, so that is where they would be given back.
"""

from __future__ import annotations

from .. import launch
from .. import protocol as p
from ..jobstate import FastEnum
from .streams import OutStream, StdinBuffer


class RunState(FastEnum):
    STAGING = "staging"  # jq --stage: its tree's missing blobs are coming; nothing runs yet
    STARTING = "starting"  # accepted; the shell is spawning its process
    RUNNING = "running"  # its process runs
    KILLING = "killing"  # SIGTERM sent to its group; SIGKILL due at Run.kill_at (None once sent)
    DRAINING = "draining"  # its process was reaped; reading the rest of its output to EOF
    HELD = "held"  # ended by a signal from outside: the end waits OUTSIDE_SIGNAL_HOLD (a stop may follow)
    FETCHING = "fetching"  # jq --stage: its results are going back to the client; then it finishes
    FINISHED = "finished"  # its end was reported; kept until the server releases it


class RunEvent(FastEnum):
    STAGED = "staged"  # its private directory holds the tree: spawn it there
    STAGE_FAILED = "stage-failed"  # the tree could not be staged (or the client cancelled meanwhile)
    COLLECT = "collect"  # a staged run ended: send its results before its end
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
    (S.STAGING, E.STAGED): S.STARTING,
    (S.STAGING, E.STAGE_FAILED): S.FINISHED,
    (S.STAGING, E.FORGET): None,
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
    (S.DRAINING, E.COLLECT): S.FETCHING,
    (S.HELD, E.COLLECT): S.FETCHING,
    (S.FETCHING, E.FINISH): S.FINISHED,
    (S.FETCHING, E.FORGET): None,
    (S.FINISHED, E.RELEASE): None,
    (S.FINISHED, E.FORGET): None,
}

#: States in which the run's process may still be alive (it can be signalled).
ALIVE = frozenset({S.RUNNING, S.KILLING})
#: States in which the run's process has been reaped.
EXITED = frozenset({S.DRAINING, S.HELD, S.FETCHING, S.FINISHED})


class IllegalTransition(Exception):
    def __init__(self, job_id: str, state: RunState, event: RunEvent) -> None:
        super().__init__(f"run of job {job_id}: event {event.value!r} is not allowed in state {state.value!r}")


def next_state(job_id: str, state: RunState, event: RunEvent) -> RunState | None:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(job_id, state, event) from None


class Run:
    """A job run on this worker, from its assignment until it is forgotten."""

    # What a run starts with, as class attributes: set on the instance once they change
    # (a run is made per job; most of these never change for a trivial one).
    pid = 0
    exit_status: int | None = None
    reason = ""  # exited, signaled, timeout, killed; or why it failed to start
    kill_reason = ""  # why we terminated it (empty: we did not)
    kill_pending = ""  # terminated while STARTING: why, acted on once spawned
    kill_at: float | None = None  # SIGKILL due (KILLING)
    client_signalled = False  # its client forwarded a signal to it
    hold_until: float | None = None  # HELD until then
    finished: p.Finished | None = None

    def __init__(self, assign: p.Assign, now: float) -> None:
        self.job_id = assign.job_id
        self.attempt = assign.attempt
        self.spec = spec = assign.spec
        self.allocation = assign.allocation  # what it holds of the worker's resources
        # written only by WorkerCore._transition (a staged run first fetches its tree)
        self.state = S.STAGING if spec.stage else S.STARTING
        self.started = now
        self.deadline = now + spec.timeout if spec.timeout else None
        # stdout and stderr; a terminal has one stream, read as stdout; one closed by the
        # job's caller, or one pipe for both (2>&1), is a stream closed from the start
        stdin, stdout, stderr = launch.job_pipes(spec)
        self.streams = {p.STDOUT: OutStream(open=stdout), p.STDERR: OutStream(open=stderr)}
        self.stdin = StdinBuffer(open=stdin)

    def matches(self, attempt: int) -> bool:
        return self.attempt == attempt

    @property
    def output_open(self) -> bool:
        streams = self.streams
        return streams[p.STDOUT].open or streams[p.STDERR].open


def exit_code(wait_status: int) -> int:
    """A wait status as Popen's returncode (negative: killed by that signal); pure,
    as ``os.waitstatus_to_exitcode`` on Linux."""
    signum = wait_status & 0x7F
    return -signum if signum else (wait_status >> 8) & 0xFF
