"""The worker's core, driven without processes, pipes, sockets or clocks.

The harness plays the shell: it answers a Spawn at once (with a pid, or the
failure it was told to give), writes stdin as far as a pretend pipe has
room, and tracks which of a job's fds are still open, so that it only ever
reports what a real shell could see.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobqueue import launch
from jobqueue import protocol as p
from jobqueue.worker import actions as a
from jobqueue.worker.core import OUTSIDE_SIGNAL_HOLD, WorkerCore
from jobqueue.worker.runstate import TRANSITIONS, IllegalTransition, RunEvent, RunState, next_state

GRACE = 3.0
EXITED_0 = 0  # wait statuses
SIGTERMED = int(signal.SIGTERM)


def exited(code: int) -> int:
    return code << 8


class Harness:
    """A core plus a pretend shell."""

    def __init__(self, now: float = 100.0, **cfg: Any) -> None:
        self.now = now
        cfg.setdefault("kill_grace", GRACE)
        self.core = WorkerCore(a.CoreConfig(name="w", host="h", **cfg), now)
        self.log: list[a.Action] = []  # every action, in order
        self.next_pid = 1000
        self.spawn_failure: tuple[a.SpawnFailure, str] | None = None
        self.stdin_room: int | None = None  # bytes the pipe takes per write (None: all)
        self.stdin_breaks = False  # the next write gets EPIPE
        self.stdin_data: dict[str, bytearray] = {}  # what the job read from its stdin
        self.pids: dict[str, int] = {}  # live (unreaped) processes
        self.fds: dict[str, set[int]] = {}  # our open fds of each job

    # --- the pretend shell -------------------------------------------------------------

    def feed(self, actions: list[a.Action]) -> list[a.Action]:
        done: list[a.Action] = []
        for action in actions:
            done.append(action)
            self.log.append(action)
            if isinstance(action, a.Spawn):
                done += self._spawn(action)
            elif isinstance(action, a.WriteStdin):
                assert p.STDIN in self.fds[action.job_id], "write to a closed stdin"
                done += self._write(action)
            elif isinstance(action, a.ClosePipe):
                assert action.fd in self.fds[action.job_id], f"closed twice: {action}"
                self.fds[action.job_id].discard(action.fd)
            elif isinstance(action, a.Forget):
                self.fds.pop(action.job_id, None)
            elif isinstance(action, a.SignalGroup):
                assert action.pgid in self.pids.values(), f"signal to a reaped process: {action}"
        return done

    def _spawn(self, action: a.Spawn) -> list[a.Action]:
        if self.spawn_failure is not None:
            return self.feed(self.core.on_spawn_failed(action.job_id, *self.spawn_failure, self.now))
        self.next_pid += 1
        self.pids[action.job_id] = self.next_pid
        spec = action.spec
        self.fds[action.job_id] = {fd for fd, pipe in enumerate(launch.job_pipes(spec)) if pipe}
        self.stdin_data[action.job_id] = bytearray()
        return self.feed(self.core.on_spawned(action.job_id, self.next_pid, self.now))

    def _write(self, action: a.WriteStdin) -> list[a.Action]:
        data = b"".join(bytes(c) for c in action.chunks)
        if self.stdin_breaks:
            return self.feed(self.core.on_stdin_broken(action.job_id, 0, self.now))
        taken = data if self.stdin_room is None else data[:self.stdin_room]
        self.stdin_data[action.job_id] += taken
        return self.feed(self.core.on_stdin_accepted(action.job_id, len(taken), self.now))

    # --- inputs ------------------------------------------------------------------------

    def msg(self, message: p.Message) -> list[a.Action]:
        return self.feed(self.core.on_message(message, self.now))

    def assign(self, job_id: str = "j1", attempt: int = 1, argv: list[bytes] | None = None,
               **spec: Any) -> list[a.Action]:
        return self.msg(p.Assign(job_id, attempt, p.JobSpec(argv or [b"true"], {}, b"/", **spec)))

    def advance(self, seconds: float) -> list[a.Action]:
        self.now += seconds
        return self.feed(self.core.tick(self.now))

    def output(self, job_id: str, fd: int, data: bytes) -> list[a.Action]:
        assert self.core.may_read(job_id, fd)
        return self.feed(self.core.on_output(job_id, fd, data, self.now))

    def eof(self, job_id: str, *fds: int) -> list[a.Action]:
        out: list[a.Action] = []
        for fd in fds or (p.STDOUT, p.STDERR):
            if fd in self.fds.get(job_id, ()):
                out += self.feed(self.core.on_eof(job_id, fd, self.now))
        return out

    def exit(self, job_id: str = "j1", wait_status: int = EXITED_0) -> list[a.Action]:
        del self.pids[job_id]
        return self.feed(self.core.on_exit(job_id, wait_status, self.now))

    def end(self, job_id: str = "j1", wait_status: int = EXITED_0) -> list[a.Action]:
        """The process exits and its output reaches EOF."""
        return self.exit(job_id, wait_status) + self.eof(job_id)

    def os_signal(self, signum: int) -> list[a.Action]:
        return self.feed(self.core.on_os_signal(signum, self.now))

    # --- looking at what happened ---------------------------------------------------------

    def state(self, job_id: str = "j1") -> RunState | None:
        run = self.core.runs.get(job_id)
        return run.state if run else None


def sent(actions: list[a.Action], kind: type | None = None) -> list[Any]:
    return [x.message for x in actions if isinstance(x, a.Send) and (kind is None or isinstance(x.message, kind))]


def of(actions: list[a.Action], kind: type) -> list[Any]:
    return [x for x in actions if isinstance(x, kind)]


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- the lifecycle table --------------------------------------------------------------------


def test_every_run_transition_is_in_one_table() -> None:
    assert next_state("j", RunState.STARTING, RunEvent.SPAWNED) is RunState.RUNNING
    assert next_state("j", RunState.FINISHED, RunEvent.RELEASE) is None
    for state in RunState:
        for event in RunEvent:
            if (state, event) not in TRANSITIONS:
                with pytest.raises(IllegalTransition, match="not allowed"):
                    next_state("j", state, event)


def test_only_a_reaped_run_is_reported_or_forgotten() -> None:
    for (state, event), target in TRANSITIONS.items():
        if target in (RunState.FINISHED, None) and event is not RunEvent.SPAWN_FAILED:
            # STAGING: nothing was started yet (jq --stage)
            assert state in (RunState.DRAINING, RunState.HELD, RunState.FETCHING, RunState.FINISHED,
                             RunState.STAGING), (state, event)


def test_the_core_refuses_an_illegal_move(h: Harness) -> None:
    h.assign()
    with pytest.raises(IllegalTransition):
        h.core.on_spawned("j1", 5, h.now)  # already running


# --- starting ---------------------------------------------------------------------------------


def test_assigned_job_is_spawned_and_reported_started(h: Harness) -> None:
    out = h.assign(argv=[b"echo", b"hi"])
    assert of(out, a.Spawn)[0].spec.argv == [b"echo", b"hi"]
    assert sent(out, p.Started) == [p.Started("j1", 1, 1001)]
    assert h.state() is RunState.RUNNING


@pytest.mark.parametrize("kind, status, reason, words", [
    (a.SpawnFailure.NO_DIRECTORY, 255, "failed", "does not exist"),
    (a.SpawnFailure.BAD_DIRECTORY, 255, "failed", "cannot enter directory / on worker w (h): denied"),
    (a.SpawnFailure.NOT_FOUND, 127, "not-found", "command not found"),
    (a.SpawnFailure.NOT_EXECUTABLE, 126, "not-executable", "true: denied on worker w (h)"),
    (a.SpawnFailure.OTHER, 255, "failed", "cannot start true"),
])
def test_job_that_cannot_start_is_reported_with_its_status(
        h: Harness, kind: a.SpawnFailure, status: int, reason: str, words: str) -> None:
    h.spawn_failure = (kind, "denied")
    out = h.assign()
    [finished] = sent(out, p.Finished)
    assert (finished.status, finished.reason) == (status, reason) and words in finished.message
    assert not sent(out, p.Started) and h.state() is RunState.FINISHED


def test_assignment_beyond_free_slots_is_rejected() -> None:
    h = Harness(slots=2)
    h.assign("j1")
    h.assign("j2")
    out = h.assign("j3")
    assert sent(out, p.Reject) == [p.Reject("j3", 1, "no free slot")] and not of(out, a.Spawn)


def test_finished_job_waiting_for_release_takes_no_slot(h: Harness) -> None:
    h.assign("j1")
    h.end("j1")
    assert h.state("j1") is RunState.FINISHED
    assert of(h.assign("j2"), a.Spawn)


def test_assignment_of_a_job_already_held_is_rejected(h: Harness) -> None:
    h.assign("j1")
    h.end("j1")
    assert sent(h.assign("j1", attempt=2), p.Reject)


# --- output -----------------------------------------------------------------------------------


def test_output_is_sent_with_offsets_and_the_end_carries_them(h: Harness) -> None:
    h.assign()
    out = h.output("j1", 1, b"abc") + h.output("j1", 1, b"de") + h.output("j1", 2, b"x")
    assert [(m.fd, m.offset, m.data) for m in sent(out, p.Output)] == [(1, 0, b"abc"), (1, 3, b"de"), (2, 0, b"x")]
    [finished] = sent(h.end(wait_status=exited(3)), p.Finished)
    assert (finished.status, finished.reason, finished.offsets) == (3, "exited", [5, 1])


def test_job_end_waits_for_the_end_of_its_output(h: Harness) -> None:
    h.assign()
    assert not sent(h.exit(), p.Finished)
    assert h.state() is RunState.DRAINING
    assert not sent(h.eof("j1", 1), p.Finished)
    assert sent(h.eof("j1", 2), p.Finished)


def test_output_reading_pauses_at_the_window_and_resumes_on_ack(h: Harness) -> None:
    h.assign()
    chunk = b"x" * p.CHUNK_SIZE
    while h.core.may_read("j1", 1):
        h.output("j1", 1, chunk)
    assert h.core.runs["j1"].streams[1].in_flight >= p.WINDOW
    assert ("j1", 1) not in h.core.readable() and ("j1", 2) in h.core.readable()
    h.msg(p.Ack("j1", 1, 1, p.CHUNK_SIZE))
    assert h.core.may_read("j1", 1) and ("j1", 1) in h.core.readable()


def test_resume_resends_unacknowledged_output_and_stdin_position(h: Harness) -> None:
    h.assign()
    h.output("j1", 1, b"hello")
    h.output("j1", 1, b"world")
    h.msg(p.Input("j1", 1, 0, b"in"))
    h.msg(p.Ack("j1", 1, 1, 3))
    out = h.msg(p.Resume("j1", 1, [7, 0]))
    assert [(m.offset, m.data) for m in sent(out, p.Output)] == [(7, b"rld")]
    assert sent(out, p.Ack) == [p.Ack("j1", 1, p.STDIN, 2)]
    assert not sent(out, p.Finished)


def test_resume_of_a_finished_job_resends_its_end(h: Harness) -> None:
    h.assign()
    h.end()
    assert len(sent(h.msg(p.Resume("j1", 1, [0, 0])), p.Finished)) == 1


# --- stdin ------------------------------------------------------------------------------------


def test_stdin_is_written_as_the_pipe_takes_it_then_closed_at_eof(h: Harness) -> None:
    h.assign()
    h.stdin_room = 2
    out = h.msg(p.Input("j1", 1, 0, b"hello", True))
    assert sent(out, p.Ack) == [p.Ack("j1", 1, 0, 2)] and h.core.stdin_waiting() == ["j1"]
    h.stdin_room = None
    out = h.feed(h.core.on_stdin_writable("j1", h.now))
    assert sent(out, p.Ack) == [p.Ack("j1", 1, 0, 5)]
    assert of(out, a.ClosePipe) == [a.ClosePipe("j1", 0)]
    assert h.stdin_data["j1"] == b"hello" and h.core.stdin_waiting() == []


def test_duplicate_input_is_written_once_and_a_gap_is_dropped(h: Harness) -> None:
    h.assign()
    h.msg(p.Input("j1", 1, 0, b"abc"))
    h.msg(p.Input("j1", 1, 1, b"bcde"))  # a re-send overlapping what we have
    out = h.msg(p.Input("j1", 1, 9, b"zz"))  # bytes 5..8 missing
    assert h.stdin_data["j1"] == b"abcde"
    assert of(out, a.Log)[0].event == "input-gap" and not sent(out)


def test_stdin_that_breaks_is_acknowledged_and_swallowed(h: Harness) -> None:
    h.assign()
    h.stdin_breaks = True
    out = h.msg(p.Input("j1", 1, 0, b"abc"))
    assert of(out, a.ClosePipe) == [a.ClosePipe("j1", 0)]
    assert sent(out, p.Ack) == [p.Ack("j1", 1, 0, 3)]
    out = h.msg(p.Input("j1", 1, 3, b"de", True))
    assert sent(out, p.Ack) == [p.Ack("j1", 1, 0, 5)] and not of(out, a.WriteStdin)


def test_job_without_stdin_swallows_input_and_acknowledges_it(h: Harness) -> None:
    h.assign(stdin=False)
    out = h.msg(p.Input("j1", 1, 0, b"abc"))
    assert sent(out, p.Ack) == [p.Ack("j1", 1, 0, 3)] and not of(out, a.WriteStdin)


def test_terminal_stdin_ends_with_a_control_d(h: Harness) -> None:
    h.assign(tty=True)
    out = h.msg(p.Input("j1", 1, 0, b"ls\n", True))
    assert of(out, a.ClosePipe) == [a.ClosePipe("j1", 0, say_eof=True)]


def test_terminal_is_resized_and_has_no_stderr(h: Harness) -> None:
    h.assign(tty=True)
    assert of(h.msg(p.Resize("j1", 40, 100)), a.SetWindowSize) == [a.SetWindowSize("j1", 40, 100)]
    assert ("j1", 2) not in h.core.readable()
    assert sent(h.end(), p.Finished)


# --- signals, kill, timeout -----------------------------------------------------------------------


def test_client_signal_is_forwarded_to_the_job_group_and_its_death_reported_at_once(h: Harness) -> None:
    h.assign()
    assert of(h.msg(p.Signal("j1", 2)), a.SignalGroup) == [a.SignalGroup(1001, 2)]
    [finished] = sent(h.end(wait_status=2), p.Finished)
    assert (finished.status, finished.reason) == (130, "signaled")


def test_job_killed_by_outside_signal_is_reported_after_the_hold(h: Harness) -> None:
    h.assign()
    assert not sent(h.end(wait_status=SIGTERMED))
    assert h.state() is RunState.HELD
    assert h.core.next_deadline() == pytest.approx(h.now + OUTSIDE_SIGNAL_HOLD)
    assert not sent(h.advance(OUTSIDE_SIGNAL_HOLD / 2))
    [finished] = sent(h.advance(OUTSIDE_SIGNAL_HOLD), p.Finished)
    assert (finished.status, finished.reason) == (143, "signaled")


def test_job_killed_by_outside_signal_is_held_then_requeued_when_the_worker_stops(h: Harness) -> None:
    h.assign()
    h.end(wait_status=SIGTERMED)
    h.advance(OUTSIDE_SIGNAL_HOLD / 2)
    out = h.os_signal(signal.SIGTERM)
    assert sent(out) == [p.Goodbye("SIGTERM")]  # the server requeues it: no end reported
    assert of(out, a.Forget) == [a.Forget("j1")] and of(out, a.Exit)
    assert not sent(h.advance(1.0), p.Finished)


def test_kill_sends_sigterm_then_sigkill_after_the_grace(h: Harness) -> None:
    h.assign()
    out = h.msg(p.Kill("j1", 1, "cancelled by user"))
    assert of(out, a.SignalGroup) == [a.SignalGroup(1001, signal.SIGTERM)] and h.state() is RunState.KILLING
    assert h.core.next_deadline() == pytest.approx(h.now + GRACE)
    assert not of(h.advance(GRACE - 0.1), a.SignalGroup)
    assert of(h.advance(0.1), a.SignalGroup) == [a.SignalGroup(1001, signal.SIGKILL)]
    assert h.core.next_deadline() is None


def test_server_kill_of_a_running_job_frees_its_slot(h: Harness) -> None:
    h.assign()
    h.msg(p.Kill("j1", 1, "client gone"))
    out = h.end(wait_status=SIGTERMED)
    [finished] = sent(out, p.Finished)
    assert (finished.reason, finished.message) == ("killed", "client gone")
    assert of(out, a.Forget) == [a.Forget("j1")] and h.state() is None
    assert of(h.assign("j2"), a.Spawn)


def test_kill_of_a_finished_job_forgets_it(h: Harness) -> None:
    h.assign()
    h.end()
    assert of(h.msg(p.Kill("j1", 1, "lost")), a.Forget) == [a.Forget("j1")]


def test_timeout_kills_and_reports_124(h: Harness) -> None:
    h.assign(timeout=5.0)
    assert h.core.next_deadline() == pytest.approx(h.now + 5.0)
    out = h.advance(5.0)
    assert of(out, a.SignalGroup) == [a.SignalGroup(1001, signal.SIGTERM)]
    [finished] = sent(h.end(wait_status=SIGTERMED), p.Finished)
    assert (finished.status, finished.reason, finished.message) == (124, "timeout", "run time limit reached")
    assert h.state() is RunState.FINISHED  # kept until released


# --- the server -------------------------------------------------------------------------------------


def test_finished_job_end_is_resent_after_the_server_comes_back(h: Harness) -> None:
    h.assign()
    [finished] = sent(h.end())
    assert h.core.hello().jobs == [p.ActiveJob("j1", 1, [b"true"], [], True)]
    assert sent(h.msg(p.Welcome("server-2", 1.0, 3))) == [finished]


def test_running_job_is_announced_in_the_hello(h: Harness) -> None:
    h.assign()
    assert h.core.hello().jobs == [p.ActiveJob("j1", 1, [b"true"], [], False)]


def test_release_forgets_a_finished_job(h: Harness) -> None:
    h.assign()
    h.end()
    assert not of(h.msg(p.Release("j1", 2)), a.Forget)  # another attempt's
    assert of(h.msg(p.Release("j1", 1)), a.Forget) == [a.Forget("j1")]
    assert h.core.hello().jobs == []


def test_stale_attempt_messages_are_ignored(h: Harness) -> None:
    h.assign("j1", attempt=2)
    h.output("j1", 1, b"abc")
    for message in (p.Kill("j1", 1, "x"), p.Input("j1", 1, 0, b"in"), p.Ack("j1", 1, 1, 3),
                    p.Resume("j1", 1, [0, 0]), p.Release("j1", 1)):
        assert h.msg(message) == [], message
    assert h.core.runs["j1"].streams[1].acked == 0 and h.state() is RunState.RUNNING


def test_server_lost_terminates_every_job(h: Harness) -> None:
    h.core = WorkerCore(a.CoreConfig(name="w", slots=2), h.now)
    h.assign("j1")
    h.assign("j2")
    out = h.feed(h.core.on_server_lost("server lost", h.now))
    assert of(out, a.SignalGroup) == [a.SignalGroup(1001, signal.SIGTERM), a.SignalGroup(1002, signal.SIGTERM)]


# --- the worker's own life ---------------------------------------------------------------------------


def test_stop_terminates_jobs_and_exits_once_they_end_without_reporting_them(h: Harness) -> None:
    h.assign()
    out = h.os_signal(signal.SIGINT)
    assert sent(out) == [p.Goodbye("SIGINT")] and of(out, a.SignalGroup) == [a.SignalGroup(1001, signal.SIGTERM)]
    assert not of(out, a.Exit)
    assert sent(h.assign("j2"), p.Reject)
    out = h.end(wait_status=SIGTERMED)
    assert not sent(out) and of(out, a.Forget) and of(out, a.Exit)


def test_drain_finishes_running_jobs_then_says_goodbye(h: Harness) -> None:
    h.assign()
    assert sent(h.os_signal(signal.SIGUSR1)) == [p.Drain()]
    assert h.core.hello().draining
    assert sent(h.assign("j2"), p.Reject)
    h.end()
    out = h.msg(p.Release("j1", 1))
    assert sent(out) == [p.Goodbye("done")] and of(out, a.Exit) == [a.Exit(0)]


def test_drain_asked_by_the_server_exits_at_once_when_idle(h: Harness) -> None:
    out = h.msg(p.Drain())
    assert sent(out) == [p.Drain(), p.Goodbye("done")] and of(out, a.Exit)


def test_max_jobs_drains_after_the_last_start_and_exits_once_released() -> None:
    h = Harness(max_jobs=2, slots=2)
    assert not sent(h.assign("j1"), p.Drain)
    assert sent(h.assign("j2"), p.Drain) == [p.Drain()]
    h.end("j1")
    h.msg(p.Release("j1", 1))
    h.end("j2")
    assert of(h.msg(p.Release("j2", 1)), a.Exit)


def test_idle_timeout_exits_when_no_job_comes() -> None:
    h = Harness(idle_timeout=10.0)
    assert h.core.next_deadline() == pytest.approx(110.0)
    assert not of(h.advance(9.9), a.Exit)
    assert sent(h.advance(0.1)) == [p.Goodbye("done")]
    assert h.core.next_deadline() is None


def test_idle_timeout_counts_from_the_last_job_forgotten() -> None:
    h = Harness(idle_timeout=10.0)
    h.advance(5)
    h.assign()
    assert h.core.next_deadline() is None
    h.advance(20)
    h.end()
    h.msg(p.Release("j1", 1))
    assert h.core.next_deadline() == pytest.approx(h.now + 10.0)
    assert not of(h.advance(9.0), a.Exit) and of(h.advance(1.0), a.Exit)


# --- staging (jq --stage) ---------------------------------------------------------------------------

TREE = b"d" * 32


def staged(h: Harness, job_id: str = "j1", attempt: int = 1) -> list[a.Action]:
    return h.assign(job_id, attempt, stage=TREE)


def test_a_staged_job_is_staged_first_then_spawned_in_its_private_directory(h: Harness) -> None:
    out = staged(h)
    [stage] = of(out, a.Stage)
    assert stage.spec.stage == TREE and not of(out, a.Spawn) and h.state() is RunState.STAGING
    assert not h.core.readable() and not sent(out, p.Started)
    out = h.feed(h.core.on_staged("j1", b"/cache/jobs/j1-x/sub", h.now))
    assert of(out, a.Spawn)[0].spec.cwd == b"/cache/jobs/j1-x/sub" and h.state() is RunState.RUNNING
    assert sent(out, p.Started)


def test_blobs_go_to_the_stager_only_while_staging_and_only_of_this_attempt(h: Harness) -> None:
    staged(h)
    blob = p.Blob("j1", 1, 0, TREE, 1, b"x", True)
    assert of(h.msg(blob), a.ToStager) == [a.ToStager(blob)]
    assert not of(h.msg(p.Blob("j1", 2, 0, TREE, 1, b"x", True)), a.ToStager)
    h.feed(h.core.on_staged("j1", b"/w", h.now))
    assert not of(h.msg(blob), a.ToStager)


def test_a_staged_job_sends_its_results_before_its_end(h: Harness) -> None:
    staged(h)
    h.feed(h.core.on_staged("j1", b"/w", h.now))
    out = h.end()
    assert of(out, a.Collect) == [a.Collect("j1")] and not sent(out, p.Finished)
    assert h.state() is RunState.FETCHING
    want, ack = p.Want("j1", 1, [0], True), p.Ack("j1", 1, p.RESULTS, 10)
    assert of(h.msg(want), a.ToStager) == [a.ToStager(want)]
    assert of(h.msg(ack), a.ToStager) == [a.ToStager(ack)]
    out = h.feed(h.core.on_results_delivered("j1", h.now))
    assert sent(out, p.Finished)[0].status == 0 and h.state() is RunState.FINISHED


def test_staging_that_fails_ends_the_job_with_255_saying_why(h: Harness) -> None:
    staged(h)
    [finished] = sent(h.feed(h.core.on_stage_failed("j1", "staging failed: disk full", h.now)), p.Finished)
    assert (finished.status, finished.reason) == (255, "failed")
    assert finished.message == "staging failed: disk full (on worker w)"


def test_a_signal_while_staging_ends_the_job_as_killed_by_it(h: Harness) -> None:
    staged(h)
    [finished] = sent(h.msg(p.Signal("j1", 2)), p.Finished)
    assert (finished.status, finished.reason) == (130, "signaled")


def test_a_kill_while_staging_ends_the_run_so_that_the_server_frees_its_slot(h: Harness) -> None:
    # the server holds a worker's slot for a run until it hears of its end: after a worker
    # was taken for lost and came back, the run it still stages is a stale attempt, killed;
    # ended silently, the slot was held for ever and the requeued attempt never ran
    staged(h)
    out = h.msg(p.Kill("j1", 1, "stale attempt"))
    [finished] = sent(out, p.Finished)
    assert (finished.job_id, finished.attempt, finished.status, finished.reason) == ("j1", 1, 143, "killed")
    assert of(out, a.Forget) and "j1" not in h.core.runs  # (a killed run keeps no end: nobody asks again)


def test_a_stop_while_staging_forgets_the_run(h: Harness) -> None:
    staged(h, "j2")
    out = h.os_signal(signal.SIGTERM)
    assert of(out, a.Forget) and not h.core.runs and not sent(out, p.Finished)


def test_a_resume_while_staging_goes_to_the_stager_and_stdin_waits_for_the_process(h: Harness) -> None:
    h.assign("j1", 1, stage=TREE, stdin=True)
    resume = p.Resume("j1", 1, [0, 0])
    assert of(h.msg(resume), a.ToStager) == [a.ToStager(resume)]
    assert not of(h.msg(p.Input("j1", 1, 0, b"early", False)), a.WriteStdin)
    out = h.feed(h.core.on_staged("j1", b"/w", h.now))
    assert of(out, a.WriteStdin) and h.stdin_data["j1"] == b"early"


def test_timeout_counts_from_the_start_not_from_staging_and_results_still_come_back(h: Harness) -> None:
    h.assign("j1", 1, stage=TREE, timeout=5.0)
    h.advance(60)  # a slow staging
    h.feed(h.core.on_staged("j1", b"/w", h.now))
    assert not of(h.advance(4.0), a.SignalGroup)
    assert of(h.advance(1.0), a.SignalGroup)
    assert of(h.end("j1", SIGTERMED), a.Collect)
    [finished] = sent(h.feed(h.core.on_results_delivered("j1", h.now)), p.Finished)
    assert (finished.status, finished.reason) == (124, "timeout")


def test_a_stop_while_fetching_forgets_the_run_unreported(h: Harness) -> None:
    staged(h)
    h.feed(h.core.on_staged("j1", b"/w", h.now))
    h.end()
    out = h.os_signal(signal.SIGTERM)
    assert of(out, a.Forget) and not sent(out, p.Finished) and not h.core.runs


# --- properties ----------------------------------------------------------------------------------------

JOBS = ["j1", "j2"]
job_ids = st.sampled_from(JOBS)
attempts = st.integers(1, 2)
assign = st.tuples(st.just("assign"), st.sampled_from(JOBS + JOBS[:1]), attempts, st.booleans(), st.booleans(),
                   st.sampled_from([None, 1.0]))
small_read = st.tuples(st.just("read"), job_ids, st.sampled_from([1, 2]), st.integers(1, 100))
big_read = st.tuples(st.just("read"), job_ids, st.sampled_from([1, 2]), st.integers(p.CHUNK_SIZE, 3 * p.CHUNK_SIZE))
ack = st.tuples(st.just("ack"), job_ids, attempts, st.sampled_from([1, 2]), st.integers(0, 4 * p.CHUNK_SIZE))
ops = st.one_of(  # jobs must start and produce output for most steps to matter
    assign, small_read, big_read, ack,
    st.tuples(st.just("exit"), job_ids, st.sampled_from([0, exited(1), SIGTERMED, 9, 2])),
    st.tuples(st.just("eof"), job_ids, st.sampled_from([1, 2])),
    st.tuples(st.just("input"), job_ids, attempts, st.integers(0, 6), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("writable"), job_ids, st.sampled_from([None, 0, 1])),
    st.tuples(st.just("broken"), job_ids),
    st.tuples(st.just("msg"), st.sampled_from(["kill", "signal", "release", "release", "resume", "resume", "welcome",
                                               "resize", "close-1", "close-2"]), job_ids, attempts),
    st.tuples(st.just("tick"), st.sampled_from([0.05, 0.25, 1.0, 4.0])),
    # rarer: a stopped or draining worker takes no new jobs
    st.tuples(st.just("stop"), st.sampled_from(["os-term", "os-usr1", "drain"]), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, min_size=10, max_size=60), slots=st.integers(1, 2))
def test_random_events_never_break_a_rule(steps: list[tuple[Any, ...]], slots: int) -> None:
    """Whatever happens, in any order: no illegal move, no action on a reaped or
    forgotten job (the harness asserts those), and output bytes leave once, in
    order, as read (a Resume's re-send excepted, which must match)."""
    h = Harness(slots=slots, max_jobs=0)
    read: dict[tuple[str, int, int], bytearray] = {}  # (job, attempt, fd) -> bytes read
    sent_to: dict[tuple[str, int, int], int] = {}  # first-time sends reached this offset
    counter = 0
    for step in steps:
        kind, *args = step
        run = h.core.runs.get(args[0]) if kind not in ("msg", "stop", "tick") else None
        resend = False
        if kind == "assign":
            job_id, attempt, stdin, tty, timeout = args
            out = h.assign(job_id, attempt, stdin=stdin, tty=tty, timeout=timeout)
            if of(out, a.Spawn):  # a new run: its streams start from 0
                for fd in (1, 2):
                    read.pop((job_id, attempt, fd), None)
                    sent_to.pop((job_id, attempt, fd), None)
        elif kind == "exit":
            if args[0] not in h.pids:
                continue
            out = h.exit(args[0], args[1])
        elif kind == "eof":
            out = h.eof(args[0], args[1])
        elif kind == "read":
            job_id, fd, size = args
            if fd not in h.fds.get(job_id, ()) or not h.core.may_read(job_id, fd):
                continue
            counter += 1
            data = bytes([counter % 256]) * size
            assert run is not None
            read.setdefault((job_id, run.attempt, fd), bytearray()).extend(data)
            out = h.output(job_id, fd, data)
        elif kind == "ack":
            job_id, attempt, fd, offset = args
            out = h.msg(p.Ack(job_id, attempt, fd, offset))
        elif kind == "input":
            job_id, attempt, offset, size, eof = args
            out = h.msg(p.Input(job_id, attempt, offset, b"i" * size, eof))
        elif kind == "writable":
            job_id, room = args
            if job_id not in h.core.stdin_waiting():
                continue
            h.stdin_room = room
            out = h.feed(h.core.on_stdin_writable(job_id, h.now))
        elif kind == "broken":
            if args[0] not in h.core.stdin_waiting():
                continue
            h.stdin_breaks = True
            out = h.feed(h.core.on_stdin_writable(args[0], h.now))
            h.stdin_breaks = False
        elif kind == "msg":
            what, job_id, attempt = args
            r = h.core.runs.get(job_id)
            resend = what == "resume"
            message: p.Message = {
                "kill": p.Kill(job_id, attempt, "k"),
                "signal": p.Signal(job_id, 15),
                "release": p.Release(job_id, attempt),
                "resume": p.Resume(job_id, attempt, [r.streams[1].acked if r else 0, 0]),
                "welcome": p.Welcome("s", 1.0, 3),
                "resize": p.Resize(job_id, 24, 80),
                "close-1": p.CloseOutput(job_id, attempt, 1),
                "close-2": p.CloseOutput(job_id, attempt, 2),
            }[what]
            out = h.msg(message)
        elif kind == "stop":
            what, dice = args
            if dice:
                continue
            out = h.msg(p.Drain()) if what == "drain" else h.os_signal(
                signal.SIGTERM if what == "os-term" else signal.SIGUSR1)
        else:
            out = h.advance(args[0])
        for message in sent(out, p.Output):
            key = (message.job_id, message.attempt, message.fd)
            assert message.data == bytes(read[key][message.offset:message.offset + len(message.data)])
            if not resend:
                assert message.offset == sent_to.get(key, 0), "output sent twice or out of order"
                sent_to[key] = message.offset + len(message.data)
        for job_id, r in h.core.runs.items():
            for fd, stream in r.streams.items():
                assert stream.offset == len(read.get((job_id, r.attempt, fd), b""))
        if h.core.exited:
            assert not h.core.runs


# --- a reader that leaves early; the caller's closed fds and 2>&1 ---------------------------------


def test_close_output_closes_the_jobs_pipe_and_sigpipe_ends_it_without_a_hold(h: Harness) -> None:
    h.assign()
    h.output("j1", 1, b"y\n" * 10)
    out = h.msg(p.CloseOutput("j1", 1, 1))
    assert of(out, a.ClosePipe) == [a.ClosePipe("j1", 1)] and not h.core.may_read("j1", 1)
    assert h.core.runs["j1"].streams[1].in_flight == 0
    assert not of(h.msg(p.CloseOutput("j1", 1, 1)), a.ClosePipe)  # once
    out = h.exit("j1", signal.SIGPIPE) + h.eof("j1", 2)
    assert [(m.status, m.reason, m.offsets) for m in sent(out, p.Finished)] == [(141, "signaled", [20, 0])]


def test_close_output_of_another_attempt_or_a_terminal_is_ignored(h: Harness) -> None:
    h.assign()
    assert not of(h.msg(p.CloseOutput("j1", 2, 1)), a.ClosePipe)
    h.core.cfg = a.CoreConfig(name="w", slots=2)
    h.assign("t1", tty=True)
    assert h.state("t1") is RunState.RUNNING
    assert not of(h.msg(p.CloseOutput("t1", 1, 1)), a.ClosePipe)


def test_fds_the_caller_had_closed_and_one_pipe_for_2_and_1(h: Harness) -> None:
    h.assign("c", closed_fds=[1], stdin=False)
    assert h.fds["c"] == {2} and not h.core.may_read("c", 1) and h.core.may_read("c", 2)
    h.core.cfg = a.CoreConfig(name="w", slots=3)
    h.assign("m", merge_output=True, stdin=False)
    assert h.fds["m"] == {1} and not h.core.may_read("m", 2)
    out = h.end("m")
    assert [m.status for m in sent(out, p.Finished)] == [0]
