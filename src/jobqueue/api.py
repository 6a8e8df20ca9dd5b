"""The Python API: :func:`run` and :class:`Executor` mirror :func:`subprocess.run`
and :class:`concurrent.futures.Executor`, with the jobs run by jobqueue workers.

An executor keeps ONE connection to the server (a :class:`~jobqueue.client.Session`,
the client side ``jq`` uses too) for any number of jobs.  A background thread runs
its poll loop; other threads hand it submissions and cancellations through a
queue and wake it through a pipe.  Output is collected in memory
(``capture_output=True``) or written to this process's stdout/stderr fds.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import errno
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from . import config
from . import protocol as p  # msgspec: the API is not on a start-up path (jq uses jobqueue.wire)
from .api_caller import caller_environment, rlimits, thread_status
from .api_cancel import CancelledJob
from .api_jobio import Completed, JobIO, JobqueueError
from .caller import caller_attributes, exec_problem, same_file
from .client import ClientJob, Session
from .connection import Refused, ServerLost
from .resources import request_of
from .security import client_security
from .waker import Waker

if TYPE_CHECKING:
    pass

#: What subprocess.run takes: str, bytes, or a path-like of either (arguments, directory,
#: environment names and values); each is passed on as the bytes os.fsencode makes of it.
StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Command = Union[StrPath, Sequence[StrPath]]
EnvMapping = Union[Mapping[str, str], Mapping[bytes, bytes]]

__all__ = ["run", "Executor", "JobqueueError"]


def run(
    args: Command,
    *,
    input: bytes | None = None,
    capture_output: bool = False,
    check: bool = False,
    timeout: float | None = None,
    server: str | None = None,
    tags: Iterable[str] = (),
    env: EnvMapping | None = None,
    cwd: StrPath | None = None,
    priority: int = 0,
    connect_timeout: float = config.CONNECT_TIMEOUT,
    cpus: int | None = None,
    mem: int | str | None = None,
    gpus: int | None = None,
    resources: Mapping[str, int] | None = None,
    stage: StrPath | None = None,
    fetch: Iterable[str] | None = None,
    **staging: Any,
) -> Completed:
    """Run ``args`` on a worker like :func:`subprocess.run` runs it here.

    ``timeout`` is the job's run-time limit, enforced by the worker (it kills
    the job; this raises :class:`subprocess.TimeoutExpired`).  ``input=None``
    gives the job an empty stdin.  A job killed by signal N has returncode -N.

    ``stage=DIR`` runs it on a snapshot of DIR, as ``jq --stage`` does, and brings
    back what it created or changed before returning; ``fetch`` (gitignore-style
    patterns) only what matches (``[]``: nothing).  ``exclude=[...]``,
    ``stage_git=True`` and ``fetch_deletes=True`` are jq's options of those names."""
    executor = Executor(server=server, tags=tags, connect_timeout=connect_timeout)
    try:
        future = executor.submit(args, input=input, capture_output=capture_output, check=check, timeout=timeout,
                                 env=env, cwd=cwd, priority=priority, cpus=cpus, mem=mem, gpus=gpus,
                                 resources=resources, stage=stage, fetch=fetch, **staging)
        result: Completed = future.result()
    except BaseException:
        executor._abandon()  # e.g. KeyboardInterrupt: the server kills the job
        raise
    executor.shutdown()
    return result


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose work items are command lines
    run by jobqueue workers, all over one connection to the server.

    ``submit(args, **options)`` takes the keyword options of :func:`run` (except
    ``server``; ``tags`` add to the executor's) and returns a future of a
    :class:`subprocess.CompletedProcess`.  ``shutdown(cancel_futures=True)``
    cancels the jobs that have not started (the server drops them)."""

    def __init__(self, server: str | None = None, *, tags: Iterable[str] = (),
                 connect_timeout: float = config.CONNECT_TIMEOUT, key: str | None = None,
                 server_key: str | None = None) -> None:
        try:
            self.endpoint = config.endpoint(config.server_address(server))
            security = client_security(key, server_key)
        except config.UsageError as e:
            raise JobqueueError(str(e)) from None
        self.tags = list(tags)
        self._session = Session(self.endpoint, security=security, connect_timeout=connect_timeout,
                                name="jobqueue.api", proto=p)
        self._lock = threading.Lock()
        self._live: dict[str, JobIO] = {}  # submitted and not yet settled
        self._requests: queue.SimpleQueue[tuple[str, ClientJob]] = queue.SimpleQueue()
        self._waker = Waker()
        self._written: deque[tuple[ClientJob, int, int]] = deque()
        self._writers: dict[int, Any] = {}
        #: Our fds 1/2 whose reader left (appended by writer threads): jobs writing there
        #: meet SIGPIPE, as subprocess.run's children would.
        self._broken_fds: deque[int] = deque()
        self._closed_outputs: set[int] = set()
        self._feeding: dict[str, ClientJob] = {}
        #: Jobs cancelled by the caller that the server may still run (see jobqueue.api_cancel).
        self._cancelled: dict[str, ClientJob] = {}
        self._thread: threading.Thread | None = None
        self._shutdown = False
        self._abandoned = False
        self._broken = ""
        _executors.add(self)

    # --- the caller's side (any thread) ---------------------------------------------------

    def submit(  # type: ignore[override]
        self,
        args: Command,
        /,
        *,
        input: bytes | None = None,
        capture_output: bool = False,
        check: bool = False,
        timeout: float | None = None,
        tags: Iterable[str] = (),
        env: EnvMapping | None = None,
        cwd: StrPath | None = None,
        priority: int = 0,
        cpus: int | None = None,
        mem: int | str | None = None,
        gpus: int | None = None,
        resources: Mapping[str, int] | None = None,
        stage: StrPath | None = None,
        fetch: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        stage_git: bool = False,
        fetch_deletes: bool = False,
    ) -> concurrent.futures.Future[Completed]:
        """Queue ``args``; ``cpus``, ``mem`` (bytes, or ``"16G"``), ``gpus`` and ``resources``
        (name -> amount) are what the job needs to itself (ValueError if they are not valid)."""
        wanted = request_of(cpus, mem, gpus, dict(resources or {}))
        argv = _argv(args)
        environment = caller_environment() if env is None else {
            os.fsencode(name): os.fsencode(value) for name, value in env.items()}
        problem = exec_problem(argv, environment)
        if problem:  # what subprocess.run raises (with the reason)
            raise OSError(errno.E2BIG, f"{os.strerror(errno.E2BIG)} ({problem})", os.fsdecode(argv[0]))
        here = os.getcwdb()
        attributes = caller_attributes(rlimits(), thread_status.read())
        spec = p.JobSpec(
            argv=argv, env=environment, cwd=here if cwd is None else os.path.join(here, os.fsencode(cwd)),
            tags=[*self.tags, *tags], priority=priority, timeout=_positive_timeout(timeout), stdin=bool(input),
            merge_output=not capture_output and same_file(1, 2), resources=wanted, **attributes,  # type: ignore[arg-type]
        )
        future: concurrent.futures.Future[Completed] = concurrent.futures.Future()
        io = JobIO(self, future, args, input, capture_output, check, timeout)
        job = ClientJob(spec, io, io.job_id, proto=p)
        if stage is not None:
            from .staging.attach import StageError, stage_job

            patterns = None if fetch is None else list(fetch)
            try:
                stage_job(job, os.fspath(stage), stage_git=stage_git, excludes=exclude, fetch=patterns or (),
                          no_fetch=patterns == [], fetch_deletes=fetch_deletes,
                          say=lambda line: print(line, file=sys.stderr))
            except StageError as e:
                raise JobqueueError(str(e)) from None
            io.stager = job.stager
        with self._lock:
            if self._broken:
                raise JobqueueError(f"this executor cannot submit any more: {self._broken}")
            if self._shutdown:
                raise JobqueueError("cannot submit a job after shutdown(): create a new Executor")
            self._live[job.job_id] = io
            self._requests.put(("submit", job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="jobqueue-executor", daemon=True)
                self._thread.start()
        future.add_done_callback(lambda f: self._on_future_done(f, job))
        self._wake()
        return future

    def map(  # type: ignore[override]
        self, commands: Iterable[Command], /, **options: Any
    ) -> Iterator[Completed]:
        """Run every command (all submitted at once); yield the results in order."""
        futures = [self.submit(command, **options) for command in commands]

        def results() -> Iterator[Completed]:
            for future in futures:
                yield future.result()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``cancel_futures`` the jobs not started yet are
        cancelled.  The connection closes once every job has ended."""
        with self._lock:
            self._shutdown = True
            live = list(self._live.values())
        if cancel_futures:
            for io in live:
                io.future.cancel()
        self._wake()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _abandon(self) -> None:
        """Close the connection now: the server kills or drops every job of ours."""
        with self._lock:
            self._shutdown = self._abandoned = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _on_future_done(self, future: concurrent.futures.Future[Completed], job: ClientJob) -> None:
        if future.cancelled():  # by the caller: have the server drop (or signal) the job
            self._requests.put(("cancel", job))
            self._wake()

    def _wake(self) -> None:
        self._waker.wake()

    # --- the loop thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        session = self._session
        try:
            session.open(time.monotonic())
            while not self._done():
                self._poll_once(session)
        except (ServerLost, Refused) as e:
            reason = str(e) if isinstance(e, ServerLost) else f"the server refused: {e}"
            self._break(reason)
        except Exception as e:  # a bug: do not leave futures waiting forever
            self._break(f"internal error in the jobqueue executor: {e!r}")
            raise
        finally:
            session.close()
            if self._abandoned:
                self._break("the executor was abandoned; the server kills its jobs")
            for writer in self._writers.values():
                writer.close()
            self._waker.close()

    def _done(self) -> bool:
        with self._lock:
            return self._abandoned or (self._shutdown and not self._live)

    def _poll_once(self, session: Session) -> None:
        now = time.monotonic()
        wake = self._waker.fileno()
        conn_ready, ready = session.conn.wait([wake], session.conn.next_wakeup(now))
        now = time.monotonic()
        if wake in ready:
            self._drain_wakeups()
        self._take_requests(session)
        if conn_ready:
            session.receive(now)
        self._feed_inputs()
        if self._cancelled:
            self._signal_cancelled(session, now)
        session.flush()
        session.conn.tick(now)

    def _drain_wakeups(self) -> None:
        self._waker.drain()
        while self._broken_fds:
            fd = self._broken_fds.popleft()
            self._closed_outputs.add(fd)
            for job in list(self._session.jobs.values()):
                if not job.io.capture:  # type: ignore[attr-defined]
                    job.close_output(fd)
        while self._written:
            job, fd, end = self._written.popleft()
            job.written(fd, end)
            io: JobIO = job.io  # type: ignore[assignment]
            io.unwritten -= 1
            self._settle_when_written(io)

    def _take_requests(self, session: Session) -> None:
        while True:
            try:
                kind, job = self._requests.get_nowait()
            except queue.Empty:
                return
            io: JobIO = job.io  # type: ignore[assignment]
            if kind == "submit":
                if io.future.cancelled():
                    self._resolve(io, None)
                    continue
                if not io.capture:
                    for fd in self._closed_outputs:
                        job.close_output(fd)
                session.submit(job)
                if job.spec.stdin:
                    self._feeding[job.job_id] = job
            elif kind == "cancel" and job.job_id in session.jobs:
                self._cancel(job)  # queued: the server drops it; started: it is signalled

    def _cancel(self, job: ClientJob) -> None:
        """The caller cancelled the job: its future is settled now; the server is told
        (and told again, see jobqueue.api_cancel) until the job ends."""
        io: JobIO = job.io  # type: ignore[assignment]
        if io.cancel is None:
            io.cancel = CancelledJob(self._session.conn.heartbeat, signal.SIGTERM)
            job.cancelled_by = signal.SIGTERM  # a new connection carries the cancel, not the job
            self._cancelled[job.job_id] = job
        self._resolve(io, None)  # its waiters hear now, whether the server is there or not

    def _signal_cancelled(self, session: Session, now: float) -> None:
        conn = session.conn
        sent = False
        for job_id, job in list(self._cancelled.items()):
            io: JobIO = job.io  # type: ignore[assignment]
            if job.ended is not None or job_id not in session.jobs or io.cancel is None:
                del self._cancelled[job_id]
            elif io.cancel.poll(now, up=conn.welcomed, generation=conn.generation, answered=conn.answered_at,
                                running=job.running, attempt=job.attempt, news=io.news,
                                attached=io.news_generation == conn.generation):
                job.signal(job.cancelled_by)
                sent = True
        if sent:
            session.flush()
            conn.ping()  # its Pong says the server has them (Connection.answered_at)

    def _feed_inputs(self) -> None:
        """Hand each job its input as its stdin window allows, then EOF."""
        for job_id, job in list(self._feeding.items()):
            io: JobIO = job.io  # type: ignore[assignment]
            while io.input and job.wants_stdin():
                job.feed(bytes(io.input[:p.CHUNK_SIZE]))
                io.input = io.input[p.CHUNK_SIZE:]
            if not io.input or job.ended is not None:
                if job.ended is None:
                    job.feed(b"")
                del self._feeding[job_id]

    def _writer(self, fd: int) -> Any:
        writer = self._writers.get(fd)
        if writer is None:
            from .writer import Writer

            writer = self._writers[fd] = Writer(fd, self._on_written, self._on_broken)
            writer.start()
        return writer

    def _on_written(self, job: ClientJob, fd: int, end: int) -> None:
        """In a writer thread: the chunk is out; the loop acknowledges it."""
        self._written.append((job, fd, end))
        self._wake()

    def _on_broken(self, fd: int, error: OSError | None) -> None:
        """In a writer thread: ``fd`` can no longer be written."""
        self._broken_fds.append(fd)
        self._wake()

    def _settle_when_written(self, io: JobIO) -> None:
        if io.ended is not None and not io.unwritten:
            self._resolve(io, io.outcome())

    def _resolve(self, io: JobIO, outcome: Completed | BaseException | None) -> None:
        """Give the future its outcome (``None``: it was cancelled) and forget the job."""
        with self._lock:
            if self._live.pop(io.job_id, None) is None:
                return  # settled already
        if not io.marked_running:
            io.marked_running = True
            if not io.future.set_running_or_notify_cancel():
                return  # cancelled: waiters are notified
        if outcome is None:
            return
        try:
            if isinstance(outcome, BaseException):
                io.future.set_exception(outcome)
            else:
                io.future.set_result(outcome)
        except concurrent.futures.InvalidStateError:
            pass

    def _break(self, reason: str) -> None:
        """The connection is gone for good: fail every job still waiting."""
        with self._lock:
            self._broken = reason
            live = list(self._live.values())
        for io in live:
            self._resolve(io, JobqueueError(reason))


_executors: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    """At exit, wait for the jobs of executors not shut down (as ThreadPoolExecutor does)."""
    for executor in list(_executors):
        executor.shutdown(wait=True)


def _argv(args: Command) -> list[bytes]:
    single = isinstance(args, (str, bytes, os.PathLike))
    argv = [os.fsencode(args)] if single else [os.fsencode(a) for a in args]  # type: ignore[arg-type,union-attr]
    if not argv or not argv[0]:
        raise ValueError("empty command line: give the program to run, e.g. ['echo', 'hi']")
    return argv


def _positive_timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    return timeout
