"""jobqueue-worker's shell: the poll loop around :class:`~jobqueue.worker.core.WorkerCore`.

It starts processes (:mod:`.spawn`), reads and writes their pipes, reaps
them, turns OS signals into core inputs and carries out the core's actions;
every decision is the core's.  Performance: messages leave in one write a
loop round (the lean transport), the log is flushed once a round.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import config
from .. import protocol as p
from ..confine import Confinement
from ..connection import Connection, Refused, Security, ServerLost
from ..logs import Logger
from ..resources import CPUS, Pool
from ..waker import Waker
from . import actions as a
from .actions import SpawnFailure
from .core import WorkerCore
from .spawn import Spawner, no_inheritable_fds, set_winsize

READ_SIZE = p.CHUNK_SIZE
#: SIGCHLD wakes the loop when a job ends; this bounds the wait should one be missed.
REAP_SAFETY_NET = 0.5


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
    #: Its resources (see jobqueue.resources); empty: ``slots`` CPUs.
    pools: list[Pool] = field(default_factory=list)
    bind_cpus: bool = False
    enforce_mem: bool = False
    # jq --stage (jobqueue.staging): the blob cache and the jobs' private directories
    cache_dir: str | None = None  # default: $TMPDIR/jobqueue-UID/cache
    cache_size: int = 10 << 30
    keep_workdir: bool = False
    parked_dirs: int | None = None  # job directories kept for the next job of their tree (None: max(2, slots))


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.log = Logger("worker", options.log_format, buffered=True)  # flushed once a loop round
        config.open_missing_std_fds()
        no_inheritable_fds()
        self.spawner = Spawner()
        cpus = next((pool.total for pool in options.pools if pool.name == CPUS), options.slots)
        #: Pins each job to its CPUs, limits its memory (raises ConfineError at start if it cannot).
        self.confinement = Confinement(cpus, bind_cpus=options.bind_cpus, enforce_mem=options.enforce_mem)
        if options.endpoint.startswith("ipc://"):  # immune to the spawner's directory changes
            options.endpoint = "ipc://" + os.path.abspath(options.endpoint[len("ipc://"):])
        self.core = WorkerCore(a.CoreConfig(
            name=options.name, host=socket.gethostname(), slots=options.slots, tags=options.tags,
            max_jobs=options.max_jobs, idle_timeout=options.idle_timeout, kill_grace=options.kill_grace,
            session=os.urandom(8).hex(), pid=os.getpid(), software=_software(),
            spawn_id=os.environ.get(config.ENV_SPAWN_ID, ""),  # set by the server's --spawn
            server=options.endpoint,
            resources=[p.ResourcePool(pool.name, pool.total, list(pool.items)) for pool in options.pools],
        ), time.monotonic())
        # Without keys the worker speaks ZMTP itself (jobqueue.zmtp), as jq does: its
        # few messages per job leave in one write a loop round, where pyzmq would
        # wake its I/O thread for each (a fifth of the worker's time per trivial job).
        self.conn = Connection(
            options.endpoint, self.core.hello, p.decode_to_worker, role="worker",
            connect_timeout=float("inf"), grace=options.grace, security=options.security,
        )
        self.waker = Waker()
        self._signals: list[int] = []
        self.pids: dict[str, int] = {}  # job -> pid of its process, until reaped
        self.procs: dict[str, Any] = {}  # job -> its Popen (with -t only)
        self.job_fds: dict[str, dict[int, int]] = {}  # job -> {0/1/2: our fd}
        self.fd_owner: dict[int, tuple[str, int]] = {}  # our fd -> (job, 0/1/2)
        self.done = False
        self.stager: Any = None  # a jobqueue.staging.workerside.WorkerStager, made for the first staged job
        self._pool: Any = None  # threads for the stager's work off the loop
        self._completions: list[tuple[Any, Any]] = []  # (done, future) of that work, appended by the threads
        self._waiting_stage: list[a.Stage] = []  # staged jobs waiting for the blob cache to open
        self._carry_out = self._action_handlers()
        self._deadline: float | None = None  # the core's next timer, as of the last round's end

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.spawner.refresh_own()  # with our handlers installed
        self.conn.open(time.monotonic())
        self._deadline = self.core.next_deadline()
        self.log.event("started", name=self.options.name, slots=self.options.slots,
                       tags=self.options.tags, server=self.options.endpoint)
        try:
            while not self.done:
                self._poll_once()
        except Refused as e:
            self.log.event("refused", reason=str(e))
            print(f"jobqueue-worker: the server refused this worker: {e}", file=sys.stderr)
            self._do(self.core.on_server_lost("server refused the worker", time.monotonic()))
            return 1
        except ServerLost as e:
            print(f"jobqueue-worker: {e}", file=sys.stderr)
            self._do(self.core.on_server_lost("server lost", time.monotonic()))
            return 1
        except BaseException:  # a bug (reported by the caller in one line): no job outlives us
            for pid in self.pids.values():
                _killpg(pid, signal.SIGKILL)
            raise
        finally:
            self.log.flush()
            self.conn.close(wait=2.0)
        return 0

    def _poll_once(self) -> None:
        now = time.monotonic()
        readable = [self.waker.fileno(), *(self.job_fds[job_id][which] for job_id, which in self.core.readable())]
        writable = tuple(self.job_fds[job_id][p.STDIN] for job_id in self.core.stdin_waiting())
        conn_ready, events = self.conn.wait(readable, self._timeout(now), writable=writable)
        now = time.monotonic()
        if self.waker.fileno() in events:
            self.waker.drain()
            signals, self._signals = self._signals, []
            for signum in signals:
                if signum != signal.SIGCHLD:  # it only wakes the loop, to reap (below)
                    self._do(self.core.on_os_signal(signum, now))
            while self._completions:
                done, future = self._completions.pop(0)
                error = future.exception()
                done(error if error is not None else future.result())
        if conn_ready:
            for message in self.conn.receive(now):
                self._do(self.core.on_message(message, now))
        for fd in events:
            owner = self.fd_owner.get(fd)
            if owner is not None:
                job_id, which = owner
                if which == p.STDIN:
                    self._do(self.core.on_stdin_writable(job_id, now))
                else:
                    self._read(job_id, which, now)
        self._reap(now)
        deadline = self.core.next_deadline()
        if deadline is not None and now >= deadline:  # a timer is due: else tick() has nothing to do
            self._do(self.core.tick(now))
            deadline = self.core.next_deadline()
        self._deadline = deadline  # nothing changes it before the next round's wait
        self.log.flush()  # what the log says happened is written before the round's messages leave
        self.conn.tick(now)

    def _timeout(self, now: float) -> float:
        timeout = self.conn.next_wakeup(now)
        deadline = self._deadline
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - now))
        if self.pids:
            timeout = min(timeout, REAP_SAFETY_NET)
        return timeout

    # --- carrying out the core's actions ------------------------------------------------------

    def _do(self, actions: list[a.Action]) -> None:
        carry_out = self._carry_out
        for action in actions:
            carry_out[type(action)](action)

    def _action_handlers(self) -> dict[type, Callable[[Any], object]]:
        """How each kind of action is carried out, looked up by type (a trivial job has
        about eight): each a method that takes the action, without a hop through a lambda."""
        return {
            # pyzmq's sends go at once; the lean transport's wait for the round's end
            a.Send: self._send_action if self.options.security is not None else self._queue_send,
            a.Log: self._log_action,
            a.Spawn: self._spawn_action,
            a.WriteStdin: self._write_stdin,
            a.ClosePipe: self._close_pipe_action,
            a.SignalGroup: self._signal_group,
            a.SetWindowSize: self._set_window_size,
            a.Forget: self._forget,
            a.Stage: self._stage,
            a.Collect: self._collect,
            a.ToStager: self._to_stager,
            a.Exit: self._exit,
        }

    def _queue_send(self, action: a.Send) -> None:
        self.conn.send(action.message)

    def _send_action(self, action: a.Send) -> None:
        self._send(action.message)

    def _log_action(self, action: a.Log) -> None:
        self.log.event(action.event, **action.fields)

    def _spawn_action(self, action: a.Spawn) -> None:
        self._spawn(action.job_id, action.spec, action.allocation)

    def _close_pipe_action(self, action: a.ClosePipe) -> None:
        self._close_pipe(action.job_id, action.fd, action.say_eof)

    def _signal_group(self, action: a.SignalGroup) -> None:
        _killpg(action.pgid, action.signum)

    def _set_window_size(self, action: a.SetWindowSize) -> None:
        set_winsize(self.job_fds[action.job_id][p.STDOUT], action.rows, action.cols)

    def _collect(self, action: a.Collect) -> None:
        self.stager.collect(action.job_id)

    def _forget(self, action: a.Forget) -> None:
        for which in list(self.job_fds.get(action.job_id, ())):
            self._close_pipe(action.job_id, which)
        self.job_fds.pop(action.job_id, None)
        if self.stager is not None:
            self.stager.forget(action.job_id)
        self._waiting_stage = [waiting for waiting in self._waiting_stage if waiting.job_id != action.job_id]

    def _exit(self, action: a.Exit) -> None:
        self.done = True

    # --- jq --stage -----------------------------------------------------------------------

    def _stage(self, action: a.Stage) -> None:
        if self.stager is None:
            # The first staged job: the blob cache is opened (and the staging code loaded)
            # in a thread, so that the loop keeps answering the server meanwhile (a
            # loaded machine once took it ~1 s, past a short liveness); the job waits.
            self._waiting_stage.append(action)
            if len(self._waiting_stage) == 1:
                self._background(self._open_store, self._store_opened)
            return
        self.stager.begin(action.job_id, action.attempt, action.spec)

    def _open_store(self) -> Any:
        """The blob cache (in a thread: imports, directories, a lock, a scan)."""
        import tempfile

        from ..staging import workerside  # noqa: F401 (loaded here, off the loop)
        from ..staging.blobstore import BlobStore, CacheBusy

        directory, size = self.options.cache_dir, self.options.cache_size
        parked = self.options.parked_dirs
        parked = max(2, self.options.slots) if parked is None else parked
        if directory is None:
            base = os.path.join(tempfile.gettempdir(), f"jobqueue-{os.getuid()}")
            try:
                return BlobStore(os.path.join(base, "cache"), size, parked)
            except CacheBusy:  # another worker of this user has the shared one: a private one then
                return BlobStore(os.path.join(base, f"cache-{os.getpid()}"), size, parked)
        return BlobStore(directory, size, parked)

    def _store_opened(self, store: Any) -> None:
        """On the loop: start the staged jobs that waited for the cache (or fail them)."""
        waiting, self._waiting_stage = self._waiting_stage, []
        if isinstance(store, Exception):  # CacheBusy, OSError: the jobs fail, the worker goes on
            why = str(store)
            if isinstance(store, OSError) and store.strerror:
                why = f"cannot open the worker's blob cache ({store.filename}: {store.strerror}; see --cache-dir)"
            for action in waiting:
                self._do(self.core.on_stage_failed(action.job_id, f"staging failed: {why}", time.monotonic()))
            return
        self.stager = self._make_stager(store)
        for action in waiting:
            self.stager.begin(action.job_id, action.attempt, action.spec)

    def _make_stager(self, store: Any) -> Any:
        from ..staging.workerside import WorkerStager

        self.log.event("cache", directory=store.directory, size=self.options.cache_size, blobs=len(store.policy))

        def staged(job_id: str, cwd: bytes) -> None:
            if self.options.keep_workdir:  # where to look afterwards
                self.log.event("workdir-kept", job=job_id, directory=os.fsdecode(cwd))
            self._do(self.core.on_staged(job_id, cwd, time.monotonic()))

        def failed(job_id: str, why: str) -> None:
            self._do(self.core.on_stage_failed(job_id, why, time.monotonic()))

        def delivered(job_id: str) -> None:
            self._do(self.core.on_results_delivered(job_id, time.monotonic()))

        return WorkerStager(store, lambda message: self._send(message), staged, failed, delivered,
                            keep_workdir=self.options.keep_workdir, background=self._background,
                            log=self.log.event, stopping=lambda: self.core.stopping)

    def _background(self, work: Any, done: Any) -> None:
        """Run ``work`` in a thread; ``done`` gets its outcome on the loop (the waker wakes it)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jobqueue-stage")

        def finished(future: Any) -> None:
            self._completions.append((done, future))
            self.waker.wake()

        self._pool.submit(work).add_done_callback(finished)

    def _send(self, message: p.Message) -> None:
        """Send now, the log's waiting lines first (the log says what happened before
        the server hears of it; the lean transport writes at the round's end anyway,
        after the round's flush)."""
        self.log.flush()
        self.conn.send(message)

    def _to_stager(self, action: a.ToStager) -> None:
        if self.stager is None:  # its job waits for the cache: nothing was asked for yet
            return
        message = action.message
        if isinstance(message, p.Blob):
            self.stager.on_blob(message)
        elif isinstance(message, p.Want):
            self.stager.on_want(message)
        elif isinstance(message, p.Ack):
            self.stager.on_ack(message)
        elif isinstance(message, p.Resume):
            self.stager.resume(message.job_id)

    def _spawn(self, job_id: str, spec: p.JobSpec, allocation: list[p.Grant]) -> None:
        now = time.monotonic()
        try:
            if self.confinement.active:
                self.confinement.place(job_id, tuple((g.name, g.amount, tuple(g.items)) for g in allocation))
                with self.confinement.spawning(job_id):  # the child starts on its CPUs, in its cgroup
                    started = self.spawner.start(spec)
            else:
                started = self.spawner.start(spec)
        except OSError as e:  # its cgroup could not be made or entered
            started = (SpawnFailure.OTHER, f"cannot confine the job: {e.strerror or e}")
        if isinstance(started, tuple):
            self.confinement.release(job_id)
            self._do(self.core.on_spawn_failed(job_id, *started, now))
            return
        self.pids[job_id] = started.pid
        if started.proc is not None:
            self.procs[job_id] = started.proc
        self.job_fds[job_id] = started.fds
        for which, fd in started.fds.items():
            self.fd_owner[fd] = (job_id, which)
        self._do(self.core.on_spawned(job_id, started.pid, now))

    def _read(self, job_id: str, which: int, now: float) -> None:
        fd = self.job_fds[job_id][which]
        while self.core.may_read(job_id, which):
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:  # EIO: the pty's last holder closed it
                if e.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._do(self.core.on_eof(job_id, which, now))
                return
            self._do(self.core.on_output(job_id, which, data, now))

    def _write_stdin(self, action: a.WriteStdin) -> None:
        job_id, chunks = action.job_id, action.chunks
        fd = self.job_fds[job_id][p.STDIN]
        written = 0
        now = time.monotonic()
        try:
            for chunk in chunks:
                n = os.write(fd, chunk)
                written += n
                if n < len(chunk):  # the pipe is full
                    break
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: the job closed its stdin
            self._do(self.core.on_stdin_broken(job_id, written, now))
            return
        self._do(self.core.on_stdin_accepted(job_id, written, now))

    def _close_pipe(self, job_id: str, which: int, say_eof: bool = False) -> None:
        fd = self.job_fds.get(job_id, {}).pop(which, None)
        if fd is None or self.fd_owner.pop(fd, None) is None:
            return
        try:
            if say_eof:
                os.write(fd, b"\x04")  # EOF on a terminal is ^D
            os.close(fd)
        except OSError:
            pass

    def _reap(self, now: float) -> None:
        for job_id, pid in list(self.pids.items()):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None:
                continue
            # The leader ended: so do the rest of its group, signalled while the
            # unreaped leader still holds the group's id.
            _killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            del self.pids[job_id]
            proc = self.procs.pop(job_id, None)
            if proc is not None:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            out_of_memory = self.confinement.out_of_memory(job_id)
            self.confinement.release(job_id)
            self._do(self.core.on_exit(job_id, status, now, out_of_memory))
            for which in (p.STDOUT, p.STDERR):  # the rest of its output, now rather than next round
                if which in self.job_fds.get(job_id, {}):
                    self._read(job_id, which, now)

    # --- signals -------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.waker.write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(signum, self._on_os_signal)

    def _on_os_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (OSError, ValueError, OverflowError):
        pass


def _software() -> str:
    from .. import __version__

    return __version__
