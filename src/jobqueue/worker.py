"""jobqueue-worker: pulls jobs from the server and runs them.

One process serves ``slots`` jobs at once.  Each job runs in its own process
group (session) with pipes (or a pseudo-terminal for ``-t``) for its stdio.
Output is read only while the client's window has room (back-pressure), and
kept until the client acknowledges it, so it can be re-sent after the server
restarts.  When a job's leader exits, the rest of its process group is
killed: no orphan outlives its job.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import config
from . import protocol as p
from .connection import Connection, Refused, Security, ServerLost
from .logs import Logger
from .waker import Waker

READ_SIZE = p.CHUNK_SIZE
#: A batch system stopping a worker (Slurm's scancel) signals every process of
#: its allocation, the jobs included, an instant before the worker: a job that
#: a signal from outside killed is reported this much later, so that when the
#: worker's own SIGTERM follows, the job is requeued rather than ended.
OUTSIDE_SIGNAL_HOLD = 0.2
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class WorkerOptions:
    endpoint: str
    name: str
    slots: int = 1
    tags: list[str] = field(default_factory=list)
    max_jobs: int = 0  # 0: no limit
    idle_timeout: float = 0.0  # 0: never
    kill_grace: float = config.KILL_GRACE
    grace: float = config.SERVER_GRACE
    security: Security | None = None
    log_format: str = "text"


class OutStream:
    """One output stream of a job: bytes read so far, and those not yet acknowledged."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.open = True
        self.offset = 0  # bytes read from the job so far
        self.acked = 0
        self.pending: deque[tuple[int, bytes]] = deque()  # (offset, data), unacknowledged

    @property
    def in_flight(self) -> int:
        return self.offset - self.acked

    def add(self, data: bytes) -> int:
        start = self.offset
        self.pending.append((start, data))
        self.offset += len(data)
        return start

    def ack(self, offset: int) -> None:
        self.acked = max(self.acked, min(offset, self.offset))
        while self.pending and self.pending[0][0] + len(self.pending[0][1]) <= self.acked:
            self.pending.popleft()

    def since(self, offset: int) -> list[tuple[int, bytes]]:
        """Unacknowledged chunks from ``offset`` on (for a re-send)."""
        self.ack(offset)
        out = []
        for start, data in self.pending:
            if start + len(data) > offset:
                cut = max(0, offset - start)
                out.append((start + cut, data[cut:]))
        return out


class Job:
    """A job running (or finished, until released) on this worker."""

    def __init__(self, assign: p.Assign) -> None:
        self.job_id = assign.job_id
        self.attempt = assign.attempt
        self.spec = assign.spec
        self.pid = 0  # of the job's process, once started
        self.proc: subprocess.Popen[bytes] | None = None  # with -t only
        self.streams: dict[int, OutStream] = {}
        self.stdin_fd: int | None = None
        #: Received stdin not yet written to the job, chunk by chunk (no joins, no memmove).
        self.stdin_chunks: list[memoryview] = []
        self.stdin_offset = 0  # bytes received for stdin (next expected offset)
        self.stdin_written = 0
        self.stdin_eof = False
        self.exit_status: int | None = None
        self.reason = ""
        self.finished: p.Finished | None = None
        self.started = time.monotonic()
        self.deadline = self.started + self.spec.timeout if self.spec.timeout else None
        self.kill_at: float | None = None  # SIGKILL time after a SIGTERM
        self.kill_reason = ""
        self.client_signalled = False  # its client forwarded a signal to it
        #: A job killed by a signal from outside waits until then before its end
        #: is reported: see :data:`OUTSIDE_SIGNAL_HOLD`.
        self.hold_until: float | None = None

    @property
    def done(self) -> bool:
        """Process reaped and every output stream at EOF."""
        return self.exit_status is not None and not any(s.open for s in self.streams.values())


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.log = Logger("worker", options.log_format, buffered=True)  # flushed once a loop round
        self.session = os.urandom(8).hex()
        self.jobs: dict[str, Job] = {}
        self.fd_owner: dict[int, tuple[Job, int]] = {}  # fd -> (job, stream fd or 0 for stdin)
        self.jobs_started = 0
        self.draining = False
        self.stopping = False
        self.idle_since = time.monotonic()
        config.open_missing_std_fds()
        _no_inheritable_fds()
        #: Where we return after starting a job in its directory (see _spawn_pipes).
        self.home = os.open(".", os.O_PATH | os.O_DIRECTORY)
        self.ignored_signals: list[int] = []  # set once our handlers are installed
        #: Where each program was found, per PATH, as a shell's command hash remembers it.
        self.programs: dict[tuple[str, str, str], str] = {}
        if options.endpoint.startswith("ipc://"):  # immune to those directory changes
            options.endpoint = "ipc://" + os.path.abspath(options.endpoint[len("ipc://"):])
        # Without keys the worker speaks ZMTP itself (jobqueue.zmtp), as jq does: its
        # few messages per job leave in one write a loop round, where pyzmq would
        # wake its I/O thread for each (a fifth of the worker's time per trivial job).
        self.conn = Connection(
            options.endpoint, self._hello, p.decode_to_worker, role="worker",
            connect_timeout=float("inf"), grace=options.grace, security=options.security,
        )
        self.poller = zmq.Poller()
        self.waker = Waker()
        self._signals: list[int] = []
        self._handlers = {
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
        }

    # --- session -----------------------------------------------------------------------

    def _hello(self) -> p.WorkerHello:
        held = [p.ActiveJob(j.job_id, j.attempt, j.spec.argv, j.spec.tags, j.finished is not None)
                for j in self.jobs.values()]
        return p.WorkerHello(
            p.PROTOCOL_VERSION, self.session, self.options.name, socket.gethostname(), os.getpid(),
            _software(), self.options.slots, self.options.tags, held, self.draining,
            spawn_id=os.environ.get("JOBQUEUE_SPAWN_ID", ""),  # set by the server's --spawn
        )

    def _on_welcome(self, msg: p.Welcome) -> None:
        self.log.event("connected", server=self.conn.endpoint, server_id=msg.server_id)
        # After a reconnection the server learnt our jobs from the hello; re-send ends
        # whose Release we may have missed.
        for job in self.jobs.values():
            if job.finished is not None:
                self.conn.send(job.finished)

    def _on_error(self, msg: p.Error) -> None:
        self.log.event("server-error", reason=msg.reason, job=msg.job_id)

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.ignored_signals = _ignored_signals()
        now = time.monotonic()
        self.conn.open(now)
        self.log.event("started", name=self.options.name, slots=self.options.slots,
                       tags=self.options.tags, server=self.options.endpoint)
        try:
            while not self._should_exit():
                self._poll_once()
            if not self.stopping:  # leaving on its own (idle, --max-jobs, drained): the server forgets it at once
                self.conn.send(p.Goodbye("done"))
        except Refused as e:
            self.log.event("refused", reason=str(e))
            print(f"jobqueue-worker: the server refused this worker: {e}", file=sys.stderr)
            self._kill_all("server refused the worker")
            return 1
        except ServerLost as e:
            print(f"jobqueue-worker: {e}", file=sys.stderr)
            self._kill_all("server lost")
            return 1
        finally:
            self.log.flush()
            self.conn.close(wait=2.0)
        return 0

    def _should_exit(self) -> bool:
        if self.stopping:
            return not self.jobs
        if self.draining or (self.options.max_jobs and self.jobs_started >= self.options.max_jobs):
            return not self.jobs
        if self.options.idle_timeout and not self.jobs:
            return time.monotonic() - self.idle_since >= self.options.idle_timeout
        return False

    def _poll_once(self) -> None:
        now = time.monotonic()
        timeout = self._next_timeout(now)
        self._register()
        try:
            events = dict(self.poller.poll(int(timeout * 1000)))
        except zmq.ZMQError as e:
            if e.errno != errno.EINTR:
                raise
            events = {}
        now = time.monotonic()
        if self.waker.fileno() in events:
            self._drain_wakeups()
        if self.conn.socket in events:
            for message in self.conn.receive(now):
                handler = self._handlers.get(type(message))
                if handler is not None:
                    handler(message)  # type: ignore[operator]
        for fd in events:
            owner = self.fd_owner.get(fd) if isinstance(fd, int) else None
            if owner is not None:
                job, which = owner
                if which == p.STDIN:
                    self._write_stdin(job)
                else:
                    self._read_output(job, which)
        self._reap(now)
        self._timers(now)
        self.conn.tick(now)
        self.log.flush()

    def _next_timeout(self, now: float) -> float:
        timeout = self.conn.next_wakeup(now)
        for job in self.jobs.values():
            for when in _pending_timers(job):
                timeout = min(timeout, max(0.0, when - now))
            if job.exit_status is None and job.pid:
                timeout = min(timeout, 0.5)  # SIGCHLD wakes us; this is a safety net
        if self.options.idle_timeout and not self.jobs:
            timeout = min(timeout, max(0.0, self.idle_since + self.options.idle_timeout - now))
        return timeout

    def _register(self) -> None:
        self.poller = zmq.Poller()
        if self.conn.socket is not None:
            self.poller.register(self.conn.socket, self.conn.poll_events())
        self.poller.register(self.waker.fileno(), zmq.POLLIN)
        for fd, (job, which) in self.fd_owner.items():
            if which == p.STDIN:
                if job.stdin_chunks or (job.stdin_eof and job.stdin_fd is not None):
                    self.poller.register(fd, zmq.POLLOUT)
            elif job.streams[which].in_flight < p.WINDOW:
                self.poller.register(fd, zmq.POLLIN)

    # --- signals -------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.waker.write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(signum, self._on_os_signal)

    def _on_os_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _drain_wakeups(self) -> None:
        self.waker.drain()
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) and not self.stopping:
                self._stop_politely(signal.Signals(signum).name)
            elif signum == signal.SIGUSR1:
                self._drain("SIGUSR1")

    def _stop_politely(self, why: str) -> None:
        """Tell the server first (it requeues our jobs at once), then kill them."""
        self.stopping = True
        self.log.event("stopping", why=why, jobs=len(self.jobs))
        self.conn.send(p.Goodbye(why))
        self._kill_all(f"worker stopping ({why})")
        for job in list(self.jobs.values()):
            if job.exit_status is not None:
                self._forget(job)

    def _drain(self, why: str) -> None:
        if not self.draining:
            self.draining = True
            self.log.event("draining", why=why, jobs=len(self.jobs))
            self.conn.send(p.Drain())

    # --- jobs -----------------------------------------------------------------------------

    def _on_assign(self, msg: p.Assign) -> None:
        running = sum(1 for j in self.jobs.values() if j.finished is None)
        if self.stopping or self.draining or running >= self.options.slots or msg.job_id in self.jobs:
            self.conn.send(p.Reject(msg.job_id, msg.attempt, "no free slot"))
            return
        job = Job(msg)
        self.jobs[job.job_id] = job
        self.jobs_started += 1
        failure = self._spawn(job)
        if failure is not None:
            status, reason, message = failure
            self.log.event("job-failed", job=job.job_id, reason=reason, why=message)
            job.exit_status = status
            self._finish(job, status, reason, message)
            return
        self.log.event("job-started", job=job.job_id, attempt=job.attempt, pid=job.pid)
        self.conn.send(p.Started(job.job_id, job.attempt, job.pid))
        if self.options.max_jobs and self.jobs_started >= self.options.max_jobs:
            self._drain(f"ran its {self.options.max_jobs} jobs (--max-jobs)")

    def _spawn(self, job: Job) -> tuple[int, str, str] | None:
        """Start the job's process; on failure (status, reason, message)."""
        try:
            if job.spec.tty:
                self._spawn_tty(job)
            else:
                self._spawn_pipes(job)
        except (OSError, ValueError, TypeError) as e:
            return self._spawn_failure(job.spec, e)
        return None

    def _spawn_failure(self, spec: p.JobSpec, error: Exception) -> tuple[int, str, str]:
        where = f"on worker {self.options.name} ({socket.gethostname()})"
        if isinstance(error, NoDirectory):
            if error.errno == errno.ENOENT:
                return 255, "failed", f"directory {spec.cwd} does not exist {where}; use -C DIR to choose another"
            return 255, "failed", f"cannot enter directory {spec.cwd} {where}: {error.strerror}"
        if isinstance(error, FileNotFoundError):
            return 127, "not-found", f"{spec.argv[0]}: command not found {where}"
        if isinstance(error, PermissionError):
            return 126, "not-executable", f"{spec.argv[0]}: permission denied {where}"
        if isinstance(error, OSError):
            return 126, "not-executable", f"{spec.argv[0]}: {error.strerror} {where}"
        return 255, "failed", f"cannot start {spec.argv[0]} {where}: {error}"

    def _spawn_pipes(self, job: Job) -> None:
        """posix_spawn (a vfork) rather than Popen: a third of the worker's time per
        trivial job.  It has no working directory of its own, so the worker
        enters the job's for the instant of the spawn (it runs no other thread
        that resolves relative paths)."""
        spec = job.spec
        ours: list[int] = []  # our ends of the job's pipes
        theirs: list[int] = []  # the job's ends (closed here once it has them)
        actions: list[tuple[Any, ...]] = []
        try:
            if spec.stdin:
                read_end, write_end = os.pipe()
                ours.append(write_end)
                theirs.append(read_end)
                actions.append((os.POSIX_SPAWN_DUP2, read_end, 0))
            else:
                actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
            for target in (1, 2):
                read_end, write_end = os.pipe()
                ours.append(read_end)
                theirs.append(write_end)
                actions.append((os.POSIX_SPAWN_DUP2, write_end, target))
            _enter(spec.cwd)
            try:
                job.pid = self._spawn_program(spec, actions)
            finally:
                os.fchdir(self.home)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        if spec.stdin:
            job.stdin_fd = ours.pop(0)
            self._own(job, job.stdin_fd, p.STDIN)
        for which, fd in zip((p.STDOUT, p.STDERR), ours):
            job.streams[which] = OutStream(fd)
            self._own(job, fd, which)

    def _spawn_program(self, spec: p.JobSpec, actions: list[tuple[Any, ...]]) -> int:
        """posix_spawn the job's program, found on its PATH (remembered per PATH and
        directory; looked up again if it has gone)."""
        name = spec.argv[0]
        key = (spec.env.get("PATH", ""), spec.cwd, name)
        for attempt in (1, 2):
            cached = self.programs.get(key) if attempt == 1 else None
            program = cached or _find_program(name, spec.env)
            try:
                pid = os.posix_spawn(program, spec.argv, spec.env, file_actions=actions, setsid=True,
                                     setsigdef=self.ignored_signals)
            except FileNotFoundError:
                if cached is None:
                    raise
                del self.programs[key]
                continue
            if "/" not in name:
                if len(self.programs) > 1000:
                    self.programs.clear()
                self.programs[key] = program
            return pid
        raise AssertionError("unreachable")

    def _spawn_tty(self, job: Job) -> None:
        if not os.path.isdir(job.spec.cwd):
            raise NoDirectory(errno.ENOENT, os.strerror(errno.ENOENT))
        master, slave = os.openpty()
        if job.spec.rows and job.spec.cols:
            _set_winsize(master, job.spec.rows, job.spec.cols)
        try:
            proc = subprocess.Popen(
                job.spec.argv, cwd=job.spec.cwd, env=job.spec.env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=_take_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        job.proc, job.pid = proc, proc.pid
        job.stdin_fd = os.dup(master)
        self._own(job, job.stdin_fd, p.STDIN)
        job.streams[p.STDOUT] = OutStream(master)
        job.streams[p.STDERR] = OutStream(-1)
        job.streams[p.STDERR].open = False
        self._own(job, master, p.STDOUT)

    def _own(self, job: Job, fd: int, which: int) -> None:
        os.set_blocking(fd, False)
        if not job.spec.tty:
            _grow_pipe(fd)
        self.fd_owner[fd] = (job, which)

    def _disown(self, fd: int | None) -> None:
        if fd is not None and fd >= 0 and self.fd_owner.pop(fd, None) is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _read_output(self, job: Job, which: int) -> None:
        stream = job.streams[which]
        while stream.open and stream.in_flight < p.WINDOW:
            try:
                data = os.read(stream.fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:  # EIO: the pty's last holder closed it
                if e.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                stream.open = False
                self._disown(stream.fd)
                self._maybe_finish(job)
                return
            start = stream.add(data)
            self.conn.send(p.Output(job.job_id, job.attempt, which, start, data))

    def _on_input(self, msg: p.Input) -> None:
        job = self._job(msg.job_id, msg.attempt)
        if job is None or job.finished is not None:
            return
        if msg.offset > job.stdin_offset:
            self.log.event("input-gap", job=job.job_id, have=job.stdin_offset, got=msg.offset)
            return
        data = msg.data[job.stdin_offset - msg.offset:]
        job.stdin_offset += len(data)
        if job.stdin_fd is None:  # the job closed its stdin: swallow, but acknowledge
            job.stdin_written = job.stdin_offset
            self.conn.send(p.Ack(job.job_id, job.attempt, p.STDIN, job.stdin_written))
        elif data:
            job.stdin_chunks.append(memoryview(data))
        job.stdin_eof = job.stdin_eof or msg.eof
        self._write_stdin(job)

    def _write_stdin(self, job: Job) -> None:
        fd = job.stdin_fd
        if fd is None:
            return
        written = 0
        chunks = job.stdin_chunks
        try:
            while chunks:
                n = os.write(fd, chunks[0])
                written += n
                if n < len(chunks[0]):  # the pipe is full
                    chunks[0] = chunks[0][n:]
                    break
                del chunks[0]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: the job closed its stdin
            written += sum(len(c) for c in chunks)
            chunks.clear()
            self._close_stdin(job)
        if written:
            job.stdin_written += written
            self.conn.send(p.Ack(job.job_id, job.attempt, p.STDIN, job.stdin_written))
        if job.stdin_eof and not job.stdin_chunks and job.stdin_fd is not None:
            self._close_stdin(job)

    def _close_stdin(self, job: Job) -> None:
        if job.spec.tty and job.stdin_fd is not None:
            os.write(job.stdin_fd, b"\x04")  # EOF on a terminal is ^D
        self._disown(job.stdin_fd)
        job.stdin_fd = None

    def _on_ack(self, msg: p.Ack) -> None:
        job = self._job(msg.job_id, msg.attempt)
        if job is not None and msg.fd in job.streams:
            job.streams[msg.fd].ack(msg.offset)

    def _on_signal(self, msg: p.Signal) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None and job.exit_status is None and job.pid:
            self.log.event("job-signal", job=job.job_id, signal=msg.signum)
            job.client_signalled = True
            _killpg(job.pid, msg.signum)

    def _on_resize(self, msg: p.Resize) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None and job.spec.tty and job.streams[p.STDOUT].open:
            _set_winsize(job.streams[p.STDOUT].fd, msg.rows, msg.cols)

    def _on_resume(self, msg: p.Resume) -> None:
        """The client re-attached: re-send what it lacks, tell it where stdin stands."""
        job = self._job(msg.job_id, msg.attempt)
        if job is None:
            return
        self.log.event("job-resumed", job=job.job_id, offsets=msg.offsets)
        for which, offset in zip((p.STDOUT, p.STDERR), msg.offsets):
            stream = job.streams.get(which)
            for start, data in stream.since(offset) if stream else []:
                for i in range(0, len(data), p.CHUNK_SIZE):
                    self.conn.send(p.Output(job.job_id, job.attempt, which, start + i, data[i:i + p.CHUNK_SIZE]))
        self.conn.send(p.Ack(job.job_id, job.attempt, p.STDIN, job.stdin_written))
        if job.finished is not None:
            self.conn.send(job.finished)

    def _on_release(self, msg: p.Release) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None and job.attempt == msg.attempt and job.finished is not None:
            self._forget(job)

    def _on_kill(self, msg: p.Kill) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None or job.attempt != msg.attempt:
            return
        self.log.event("job-kill", job=job.job_id, why=msg.reason)
        if job.finished is not None:
            self._forget(job)
        else:
            self._terminate(job, msg.reason, release=True)

    def _on_drain(self, msg: p.Drain) -> None:
        self._drain("server asked")

    def _job(self, job_id: str, attempt: int) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.attempt == attempt else None

    # --- ending --------------------------------------------------------------------------------

    def _terminate(self, job: Job, why: str, *, release: bool = False) -> None:
        """SIGTERM the job's group now, SIGKILL after the grace."""
        if job.exit_status is None and job.kill_at is None and job.pid:
            job.kill_reason = why
            job.kill_at = time.monotonic() + self.options.kill_grace
            _killpg(job.pid, signal.SIGTERM)
        if release:
            job.reason = job.reason or "killed"

    def _kill_all(self, why: str) -> None:
        for job in self.jobs.values():
            self._terminate(job, why)

    def _timers(self, now: float) -> None:
        for job in list(self.jobs.values()):
            if job.deadline is not None and now >= job.deadline and job.exit_status is None:
                job.deadline = None
                job.reason = "timeout"
                self.log.event("job-timeout", job=job.job_id, limit=job.spec.timeout)
                self._terminate(job, "run time limit reached")
            if job.kill_at is not None and now >= job.kill_at and job.exit_status is None:
                job.kill_at = None
                _killpg(job.pid, signal.SIGKILL)
            if job.hold_until is not None and job.finished is None:
                self._maybe_finish(job, now)

    def _reap(self, now: float) -> None:
        for job in list(self.jobs.values()):
            if not job.pid or job.exit_status is not None:
                continue
            try:
                info = os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None:
                continue
            _killpg(job.pid, signal.SIGKILL)  # the leader ended: so do the rest of its group
            _, status = os.waitpid(job.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if job.proc is not None:
                job.proc.returncode = code  # reaped here, not by Popen
            job.exit_status = code if code >= 0 else 128 - code
            if not job.reason:
                job.reason = "exited" if code >= 0 else "signaled"
            for which, stream in job.streams.items():
                if stream.open:
                    self._read_output(job, which)
            self._maybe_finish(job)

    def _maybe_finish(self, job: Job, now: float | None = None) -> None:
        if not job.done or job.finished is not None:
            return
        assert job.exit_status is not None
        outside = job.reason == "signaled" and not job.kill_reason and not job.client_signalled
        if outside and job.hold_until is None:
            job.hold_until = time.monotonic() + OUTSIDE_SIGNAL_HOLD
        if job.hold_until is not None and (now or time.monotonic()) < job.hold_until:
            return
        status = 124 if job.reason == "timeout" else job.exit_status
        self._finish(job, status, job.reason, job.kill_reason)

    def _finish(self, job: Job, status: int, reason: str, message: str) -> None:
        self._disown(job.stdin_fd)
        job.stdin_fd = None
        offsets = [job.streams[fd].offset if fd in job.streams else 0 for fd in (p.STDOUT, p.STDERR)]
        job.finished = p.Finished(job.job_id, job.attempt, status, reason, message, offsets)
        self.log.event("job-finished", job=job.job_id, status=status, reason=reason,
                       ran=round(time.monotonic() - job.started, 3))
        if self.stopping:
            self._forget(job)
            return
        self.conn.send(job.finished)
        if job.reason == "killed":
            self._forget(job)

    def _forget(self, job: Job) -> None:
        for stream in job.streams.values():
            if stream.open:
                self._disown(stream.fd)
        self._disown(job.stdin_fd)
        self.jobs.pop(job.job_id, None)
        if not self.jobs:
            self.idle_since = time.monotonic()


def _pending_timers(job: Job) -> list[float]:
    """The times at which this job needs the loop (none once it is over)."""
    timers = [job.deadline, job.kill_at] if job.exit_status is None else []
    if job.finished is None:
        timers.append(job.hold_until)
    return [t for t in timers if t is not None]


def _ignored_signals() -> list[int]:
    """The signals this process ignores: what Python ignores (SIGPIPE, SIGXFSZ) and
    what the worker's launcher made it ignore (a background shell job ignores
    SIGINT and SIGQUIT, nohup SIGHUP).  A job gets them back at their default
    action (handlers the worker installed are reset by exec itself)."""
    ignored: list[int] = []
    for signum in signal.valid_signals():
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                ignored.append(int(signum))
        except (ValueError, OSError):
            pass
    return ignored


class NoDirectory(OSError):
    """The job's working directory cannot be entered."""


def _enter(directory: str) -> None:
    try:
        os.chdir(directory)
    except OSError as e:
        raise NoDirectory(e.errno, e.strerror) from None


def _find_program(name: str, env: dict[str, str]) -> str:
    """The file that ``execvp`` would run for ``name``, searching the job's own
    PATH (from the job's directory, where relative entries and names start)."""
    if "/" in name:
        return name
    candidates = [os.path.join(directory, name) for directory in os.get_exec_path(env)]
    for path in candidates:  # one system call per directory that lacks it
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    if any(os.path.exists(path) for path in candidates):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _no_inheritable_fds() -> None:
    """Mark every fd above stderr close-on-exec: posix_spawn passes a job every fd
    that is not (Popen closed them all), and we may have inherited some."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, closed by now


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe lets one read take a whole chunk: fewer, larger messages."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: keep the default


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (OSError, ValueError, OverflowError):
        pass


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except (OSError, struct.error):
        pass


def _software() -> str:
    from . import __version__

    return __version__
