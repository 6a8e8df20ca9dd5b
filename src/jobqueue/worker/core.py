"""The worker's logic as a sans-IO state machine: inputs in, actions out.

Inputs are messages from the server, what the shell saw happen (a spawn's
result, a child's exit, bytes read or EOF on a job's output, bytes its stdin
took or a broken stdin, an OS signal to the worker) and the passing of time
(:meth:`WorkerCore.tick`); each comes with ``now`` as a value.  Every input
returns a list of actions (the dataclasses of :mod:`.actions`) for the shell to carry out
in order.  No sockets, files, processes or clock in here: the shell
(:mod:`jobqueue.worker.shell`) does all of that.

A run's lifecycle is the table in :mod:`jobqueue.worker.runstate`;
:meth:`WorkerCore._transition` is the one writer of ``Run.state``.  What only staged
runs (``jq --stage``) need is in :mod:`jobqueue.worker.staging`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from .. import launch
from .. import protocol as p
from ..resources import GPUS, format_size, job_env
from .actions import (
    Action,
    ClosePipe,
    Collect,
    CoreConfig,
    Exit,
    Forget,
    Log,
    Send,
    SetWindowSize,
    SignalGroup,
    Spawn,
    SpawnFailure,
    Stage,
    ToStager,
    WriteStdin,
)
from .runstate import ALIVE, EXITED, TRANSITIONS, IllegalTransition, Run, RunEvent, RunState, exit_code
from .staging import StagingMixin

#: A batch system stopping a worker (Slurm's scancel) signals every process of
#: its allocation, the jobs included, an instant before the worker: a job that
#: a signal from outside killed is reported this much later, so that when the
#: worker's own SIGTERM follows, the job is requeued rather than ended.
OUTSIDE_SIGNAL_HOLD = 0.2
#: The OS signals that stop a worker politely (SIGUSR1 drains it).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

S, E = RunState, RunEvent
# Looked up on every loop round or move: module globals, not attribute lookups.
STAGING, FINISHED, WINDOW = S.STAGING, S.FINISHED, p.WINDOW


class WorkerCore(StagingMixin):
    def __init__(self, cfg: CoreConfig, now: float) -> None:
        self.cfg = cfg
        self.runs: dict[str, Run] = {}
        self.jobs_started = 0
        self.draining = False
        self.stopping = False
        self.exited = False
        self.idle_since = now
        self._out: list[Action] = []
        #: A worker that hands out GPUs tells a job without any that it has none.
        self._has_gpus = any(pool.name == GPUS and pool.total for pool in cfg.resources)
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            p.Welcome: self._on_welcome,
            p.Assign: self._on_assign,
            p.Input: self._on_input,
            p.Ack: self._on_ack,
            p.Signal: self._on_signal,
            p.Resize: self._on_resize,
            p.Resume: self._on_resume,
            p.Release: self._on_release,
            p.Kill: self._on_kill,
            p.Drain: self._on_drain,
            p.Error: self._on_error,
            p.CloseOutput: self._on_close_output,
            p.Blob: self._on_stage_message,
            p.Want: self._on_stage_message,
        }

    # --- queries --------------------------------------------------------------------------

    def hello(self) -> p.WorkerHello:
        """What the connection says on every (re)connection: who we are and what we hold."""
        c = self.cfg
        held = [p.ActiveJob(r.job_id, r.attempt, launch.shown_argv(r.spec.argv), r.spec.tags, r.state is S.FINISHED,
                            r.allocation)
                for r in self.runs.values()]
        return p.WorkerHello(p.PROTOCOL_VERSION, c.session, c.name, c.host, c.pid, c.software, c.slots,
                             c.tags, held, self.draining, spawn_id=c.spawn_id, resources=c.resources)

    def may_read(self, job_id: str, fd: int) -> bool:
        """Whether to read the job's output stream now (open, and its window not full)."""
        run = self.runs.get(job_id)
        stream = run.streams.get(fd) if run is not None else None
        return stream is not None and stream.open and stream.in_flight < p.WINDOW

    def readable(self) -> list[tuple[str, int]]:
        """The (job, fd) output streams to poll for reading now (asked every loop round)."""
        readable = []
        for job_id, run in self.runs.items():
            if run.state is not STAGING:
                for fd, s in run.streams.items():
                    if s.open and s.offset - s.acked < WINDOW:
                        readable.append((job_id, fd))
        return readable

    def stdin_waiting(self) -> list[str]:
        """The jobs whose stdin has bytes waiting for room in its pipe."""
        return [job_id for job_id, run in self.runs.items() if run.stdin.open and run.stdin.chunks]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next run (None: no timer)."""
        times: list[float] = []
        for run in self.runs.values():
            if run.state is S.RUNNING and run.deadline is not None:
                times.append(run.deadline)
            elif run.state is S.KILLING and run.kill_at is not None:
                times.append(run.kill_at)
            elif run.state is S.HELD and run.hold_until is not None:
                times.append(run.hold_until)
        if self.cfg.idle_timeout and not self.runs and not self.exited:
            times.append(self.idle_since + self.cfg.idle_timeout)
        return min(times, default=None)

    # --- inputs ---------------------------------------------------------------------------

    def on_message(self, message: p.Message, now: float) -> list[Action]:
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(message, now)
        return self._actions(now)

    def on_spawned(self, job_id: str, pid: int, now: float) -> list[Action]:
        run = self.runs[job_id]
        run.pid = pid
        self._transition(run, E.SPAWNED, now)
        self._log("job-started", job=job_id, attempt=run.attempt, pid=pid)
        self._send(p.Started(job_id, run.attempt, pid))
        self._count_start()
        self._feed_stdin(run)  # stdin that came while a staged job's files were coming
        if run.kill_pending:
            self._terminate(run, run.kill_pending, now)
        return self._actions(now)

    def on_spawn_failed(self, job_id: str, kind: SpawnFailure, detail: str, now: float) -> list[Action]:
        run = self.runs[job_id]
        status, reason, message = self._failure(run.spec, kind, detail)
        self._log("job-failed", job=job_id, reason=reason, why=message)
        run.exit_status, run.reason, run.kill_reason = status, reason, message
        for stream in run.streams.values():
            stream.open = False
        run.stdin.open = False
        self._transition(run, E.SPAWN_FAILED, now)
        self._count_start()
        return self._actions(now)

    def on_exit(self, job_id: str, wait_status: int, now: float, out_of_memory: int = 0) -> list[Action]:
        """The shell reaped the job's process (and killed the rest of its group);
        ``out_of_memory``: its memory limit, if the kernel killed it for going past it."""
        run = self.runs[job_id]
        code = exit_code(wait_status)
        run.exit_status = code if code >= 0 else 128 - code
        if out_of_memory and not run.reason:
            run.reason = "out-of-memory"
            run.kill_reason = f"job {job_id} exceeded its memory ({format_size(out_of_memory)}) and was killed"
        run.reason = run.reason or ("exited" if code >= 0 else "signaled")
        self._transition(run, E.EXITED, now)
        self._settle(run, now)
        return self._actions(now)

    def on_output(self, job_id: str, fd: int, data: bytes, now: float) -> list[Action]:
        run = self.runs[job_id]
        start = run.streams[fd].add(data)
        self._send(p.Output(job_id, run.attempt, fd, start, data))
        return self._actions(now)

    def on_eof(self, job_id: str, fd: int, now: float) -> list[Action]:
        run = self.runs[job_id]
        if run.streams[fd].open:
            run.streams[fd].open = False
            self._out.append(ClosePipe(job_id, fd))
            self._settle(run, now)
        return self._actions(now)

    def on_stdin_writable(self, job_id: str, now: float) -> list[Action]:
        run = self.runs.get(job_id)
        if run is not None:
            self._feed_stdin(run)
        return self._actions(now)

    def on_stdin_accepted(self, job_id: str, count: int, now: float) -> list[Action]:
        run = self.runs[job_id]
        if count:
            run.stdin.accepted(count)
            self._send(p.Ack(job_id, run.attempt, p.STDIN, run.stdin.written))
        self._close_stdin_at_eof(run)
        return self._actions(now)

    def on_stdin_broken(self, job_id: str, count: int, now: float) -> list[Action]:
        """EPIPE after the job took ``count`` bytes: it closed its stdin; swallow the rest."""
        run = self.runs[job_id]
        run.stdin.broken()
        self._out.append(ClosePipe(job_id, p.STDIN, say_eof=run.spec.tty))
        self._send(p.Ack(job_id, run.attempt, p.STDIN, run.stdin.written))
        return self._actions(now)

    def on_os_signal(self, signum: int, now: float) -> list[Action]:
        if signum in STOP_SIGNALS and not self.stopping:
            self._stop_politely(signal.Signals(signum).name, now)
        elif signum == signal.SIGUSR1:
            self._drain("SIGUSR1")
        return self._actions(now)

    def on_server_lost(self, why: str, now: float) -> list[Action]:
        """The connection gave up (or the server refused us): terminate every job; the shell exits."""
        self._terminate_all(why, now)
        return self._actions(now)

    def tick(self, now: float) -> list[Action]:
        """Timers: --timeout, the kill grace, the outside-signal hold, --idle-timeout."""
        for run in list(self.runs.values()):
            if run.state is S.RUNNING and run.deadline is not None and now >= run.deadline:
                run.deadline = None
                run.reason = "timeout"
                self._log("job-timeout", job=run.job_id, limit=run.spec.timeout)
                self._terminate(run, "run time limit reached", now)
            elif run.state is S.KILLING and run.kill_at is not None and now >= run.kill_at:
                run.kill_at = None
                self._transition(run, E.KILL_DUE, now)
            elif run.state is S.HELD and run.hold_until is not None and now >= run.hold_until:
                self._finish(run, now)
        return self._actions(now)

    # --- messages from the server -----------------------------------------------------------

    def _on_welcome(self, msg: p.Welcome, now: float) -> None:
        self._log("connected", server=self.cfg.server, server_id=msg.server_id)
        # After a reconnection the server learnt our runs from the hello; re-send ends
        # whose Release we may have missed.
        for run in self.runs.values():
            if run.finished is not None:
                self._send(run.finished)

    def _on_error(self, msg: p.Error, now: float) -> None:
        self._log("server-error", reason=msg.reason, job=msg.job_id)

    def _on_assign(self, msg: p.Assign, now: float) -> None:
        slots = self.cfg.slots
        full = len(self.runs) >= slots and sum(1 for r in self.runs.values() if r.state is not S.FINISHED) >= slots
        if self.stopping or self.draining or self.exited or full or msg.job_id in self.runs:
            self._send(p.Reject(msg.job_id, msg.attempt, "no free slot"))
            return
        self.runs[msg.job_id] = Run(msg, now)
        if msg.spec.resources or self._has_gpus:  # what the job is told it got (else: nothing)
            allocation = tuple((g.name, g.amount, tuple(g.items)) for g in msg.allocation)
            msg.spec.env.update(job_env(allocation, msg.spec.env, asked=bool(msg.spec.resources),
                                        has_gpus=self._has_gpus))
        if msg.spec.stage:
            self._out.append(Stage(msg.job_id, msg.attempt, msg.spec))
        else:
            self._out.append(Spawn(msg.job_id, msg.spec, msg.allocation))

    def _on_input(self, msg: p.Input, now: float) -> None:
        run = self._run(msg.job_id, msg.attempt)
        if run is None or run.state is S.FINISHED:
            return
        stdin = run.stdin
        if not stdin.receive(msg.offset, msg.data, msg.eof):
            self._log("input-gap", job=run.job_id, have=stdin.offset, got=msg.offset)
        elif not stdin.open:  # swallowed: acknowledged all the same
            self._send(p.Ack(run.job_id, run.attempt, p.STDIN, stdin.written))
        else:
            self._feed_stdin(run)

    def _on_ack(self, msg: p.Ack, now: float) -> None:
        run = self._run(msg.job_id, msg.attempt)
        if run is not None and msg.fd in run.streams:
            run.streams[msg.fd].ack(msg.offset)
        elif run is not None and msg.fd == p.RESULTS and run.state is S.FETCHING:
            self._out.append(ToStager(msg))

    def _on_signal(self, msg: p.Signal, now: float) -> None:
        run = self.runs.get(msg.job_id)
        if run is not None and run.state is S.STAGING:  # nothing runs yet: it ends as if killed by it
            self._log("job-signal", job=run.job_id, signal=msg.signum)
            self._end_staging(run, 128 + msg.signum, "signaled", "signalled while its files were staged", now)
        elif run is not None and run.state in ALIVE:
            self._log("job-signal", job=run.job_id, signal=msg.signum)
            run.client_signalled = True
            self._out.append(SignalGroup(run.pid, msg.signum))

    def _on_close_output(self, msg: p.CloseOutput, now: float) -> None:
        """The client's reader of this stream left: close the job's pipe, so that the
        job meets SIGPIPE (EPIPE) on its next write, as it would locally."""
        run = self._run(msg.job_id, msg.attempt)
        stream = run.streams.get(msg.fd) if run is not None and not run.spec.tty else None
        if run is None or stream is None or not stream.open:
            return
        self._log("job-output-closed", job=run.job_id, fd=msg.fd)
        stream.open = False
        stream.ack(stream.offset)  # nobody will acknowledge the rest
        self._out.append(ClosePipe(run.job_id, msg.fd))
        self._settle(run, now)

    def _on_resize(self, msg: p.Resize, now: float) -> None:
        run = self.runs.get(msg.job_id)
        if run is not None and run.spec.tty and run.streams[p.STDOUT].open:
            self._out.append(SetWindowSize(run.job_id, msg.rows, msg.cols))

    def _on_resume(self, msg: p.Resume, now: float) -> None:
        """The client re-attached: re-send what it lacks, tell it where stdin stands."""
        run = self._run(msg.job_id, msg.attempt)
        if run is None:
            return
        self._log("job-resumed", job=run.job_id, offsets=msg.offsets)
        if run.state in (S.STAGING, S.FETCHING):  # jq --stage: what was in flight is sent again
            self._out.append(ToStager(msg))
        for fd, offset in zip((p.STDOUT, p.STDERR), msg.offsets):
            for start, data in run.streams[fd].since(offset):
                for i in range(0, len(data), p.CHUNK_SIZE):
                    self._send(p.Output(run.job_id, run.attempt, fd, start + i, data[i:i + p.CHUNK_SIZE]))
        self._send(p.Ack(run.job_id, run.attempt, p.STDIN, run.stdin.written))
        if run.finished is not None:
            self._send(run.finished)

    def _on_release(self, msg: p.Release, now: float) -> None:
        run = self._run(msg.job_id, msg.attempt)
        if run is not None and run.state is S.FINISHED:
            self._transition(run, E.RELEASE, now)

    def _on_kill(self, msg: p.Kill, now: float) -> None:
        run = self._run(msg.job_id, msg.attempt)
        if run is None:
            return
        self._log("job-kill", job=run.job_id, why=msg.reason)
        if run.state in (S.FINISHED, S.FETCHING):
            self._transition(run, E.FORGET, now)
            return
        if run.state is S.STAGING:
            # Nothing runs yet, but the server holds the run's slot until it hears of its end
            # (a stale attempt's, or one whose client left): it ends now, as killed.
            self._end_staging(run, 128 + signal.SIGTERM, "killed", msg.reason, now)
            return
        run.reason = run.reason or "killed"  # a killed run is forgotten once its end is sent
        self._terminate(run, msg.reason, now)

    def _on_drain(self, msg: p.Drain, now: float) -> None:
        self._drain("server asked")

    def _run(self, job_id: str, attempt: int) -> Run | None:
        run = self.runs.get(job_id)
        return run if run is not None and run.matches(attempt) else None

    # --- the lifecycle ---------------------------------------------------------------------

    def _transition(self, run: Run, event: RunEvent, now: float) -> None:
        """The one writer of ``Run.state``; carries out what entering a state means."""
        try:  # (runstate.next_state, inlined: a move per event of every job)
            state = TRANSITIONS[run.state, event]
        except KeyError:
            raise IllegalTransition(run.job_id, run.state, event) from None
        if state is None:
            del self.runs[run.job_id]
            self._out.append(Forget(run.job_id))
            if not self.runs:
                self.idle_since = now
            return
        run.state = state
        if state is FINISHED:  # (first: the usual one)
            self._report(run, now)
        elif event is E.TERMINATE:
            run.kill_at = now + self.cfg.kill_grace
            self._out.append(SignalGroup(run.pid, signal.SIGTERM))
        elif event is E.KILL_DUE:
            self._out.append(SignalGroup(run.pid, signal.SIGKILL))
        elif event is E.HOLD:
            run.hold_until = now + OUTSIDE_SIGNAL_HOLD

    def _terminate(self, run: Run, why: str, now: float) -> None:
        """SIGTERM the run's group now, SIGKILL after the grace (no-op unless it runs)."""
        if run.state is S.STAGING:  # nothing runs yet
            self._transition(run, E.FORGET, now)
        elif run.state is S.STARTING:
            run.kill_pending = run.kill_pending or why
        elif run.state is S.RUNNING:
            run.kill_reason = why
            self._transition(run, E.TERMINATE, now)

    def _terminate_all(self, why: str, now: float) -> None:
        for run in list(self.runs.values()):
            self._terminate(run, why, now)

    def _settle(self, run: Run, now: float) -> None:
        """After the exit and the last EOF: hold, finish or (stopping) forget."""
        if run.state is not S.DRAINING or run.output_open:
            return
        outside = (run.reason == "signaled" and not run.kill_reason and not run.client_signalled
                   and run.exit_status != 128 + signal.SIGPIPE)  # a reader that left is no batch system
        if outside and not self.stopping:
            self._transition(run, E.HOLD, now)
        else:
            self._finish(run, now)

    def _finish(self, run: Run, now: float) -> None:
        if run.spec.stage and not self.stopping and run.reason != "killed":
            self._transition(run, E.COLLECT, now)  # its results go back first
            self._out.append(Collect(run.job_id))
        else:
            self._transition(run, E.FINISH, now)

    def _report(self, run: Run, now: float) -> None:
        """Entering FINISHED: make the end, send it (or drop it when stopping)."""
        assert run.exit_status is not None
        if run.stdin.open:
            run.stdin.open = False
            self._out.append(ClosePipe(run.job_id, p.STDIN))
        status = 124 if run.reason == "timeout" else run.exit_status
        offsets = [run.streams[fd].offset for fd in (p.STDOUT, p.STDERR)]
        run.finished = p.Finished(run.job_id, run.attempt, status, run.reason, run.kill_reason, offsets)
        self._log("job-finished", job=run.job_id, status=status, reason=run.reason,
                  ran=round(now - run.started, 3))
        if self.stopping:  # the server requeues it: nothing to report
            self._transition(run, E.FORGET, now)
            return
        self._send(run.finished)
        if run.reason == "killed":  # the server asked for it and needs no end kept
            self._transition(run, E.FORGET, now)

    # --- stdin ------------------------------------------------------------------------------

    def _feed_stdin(self, run: Run) -> None:
        if run.state is S.STAGING:
            return  # no process yet: written once it is spawned
        if run.stdin.open and run.stdin.chunks:
            self._out.append(WriteStdin(run.job_id, tuple(run.stdin.chunks)))
        else:
            self._close_stdin_at_eof(run)

    def _close_stdin_at_eof(self, run: Run) -> None:
        if run.stdin.should_close:
            run.stdin.open = False
            self._out.append(ClosePipe(run.job_id, p.STDIN, say_eof=run.spec.tty))

    # --- the worker as a whole ----------------------------------------------------------------

    def _stop_politely(self, why: str, now: float) -> None:
        """Tell the server first (it requeues our jobs at once), then kill them."""
        self.stopping = True
        self._log("stopping", why=why, jobs=len(self.runs))
        self._send(p.Goodbye(why))
        self._terminate_all(f"worker stopping ({why})", now)
        for run in list(self.runs.values()):
            if run.state in EXITED:
                self._transition(run, E.FORGET, now)

    def _drain(self, why: str) -> None:
        if not self.draining:
            self.draining = True
            self._log("draining", why=why, jobs=len(self.runs))
            self._send(p.Drain())

    def _count_start(self) -> None:
        self.jobs_started += 1
        if self.cfg.max_jobs and self.jobs_started >= self.cfg.max_jobs:
            self._drain(f"ran its {self.cfg.max_jobs} jobs (--max-jobs)")

    def _should_exit(self, now: float) -> bool:
        if self.runs:
            return False
        if self.stopping or self.draining or (self.cfg.max_jobs and self.jobs_started >= self.cfg.max_jobs):
            return True
        return bool(self.cfg.idle_timeout) and now - self.idle_since >= self.cfg.idle_timeout

    def _actions(self, now: float) -> list[Action]:
        if not self.runs and not self.exited and self._should_exit(now):
            self.exited = True
            if not self.stopping:  # leaving on its own: the server forgets it at once
                self._send(p.Goodbye("done"))
            self._out.append(Exit(0))
        out, self._out = self._out, []
        return out

    # --- helpers ---------------------------------------------------------------------------------

    def _send(self, message: p.Message) -> None:
        self._out.append(Send(message))

    def _log(self, event: str, **fields: Any) -> None:
        self._out.append(Log(event, fields))

    def _failure(self, spec: p.JobSpec, kind: SpawnFailure, detail: str) -> tuple[int, str, str]:
        """(status, reason, message) of a job that could not start."""
        where = f"on worker {self.cfg.name} ({self.cfg.host})"
        cwd, program = p.readable(spec.cwd), p.readable(spec.argv[0])
        if kind is SpawnFailure.NO_DIRECTORY:
            return 255, "failed", f"directory {cwd} does not exist {where}; use -C DIR to choose another"
        if kind is SpawnFailure.BAD_DIRECTORY:
            return 255, "failed", f"cannot enter directory {cwd} {where}: {detail}"
        if kind is SpawnFailure.NOT_FOUND:
            return 127, "not-found", f"{program}: command not found {where}"
        if kind is SpawnFailure.NOT_EXECUTABLE:
            return 126, "not-executable", f"{program}: {detail} {where}"
        return 255, "failed", f"cannot start {program} {where}: {detail}"
