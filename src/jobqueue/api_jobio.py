"""One Python API job's side of the client protocol (the JobIO of a ClientJob): its
future, its input, its output, and what its future gets when it ends."""

from __future__ import annotations

import concurrent.futures
import errno
import subprocess
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .api_cancel import CancelledJob
from .client import ClientJob, new_job_id

if TYPE_CHECKING:
    from .api import Executor
    from .client import FinishedMessage, QueuedMessage, RequeuedMessage, StartedMessage

Completed = subprocess.CompletedProcess  # of bytes, or of None without capture_output


class JobqueueError(Exception):
    """jobqueue itself failed (what ``jq`` reports with exit 255): the server is
    unreachable or refused us, the job could not start or was lost, or the
    executor is shut down.  The message says what to do."""


class JobIO:
    """One API job: its future, its input, and its output (the JobIO of a ClientJob)."""

    def __init__(self, executor: Executor, future: concurrent.futures.Future[Completed], args: Any,
                 input: bytes | None, capture_output: bool, check: bool, timeout: float | None) -> None:
        self.job_id = new_job_id()
        self.executor = executor
        self.future = future
        self.args = args
        self.input = memoryview(bytes(input)) if input else memoryview(b"")
        self.capture = capture_output
        self.check = check
        self.timeout = timeout
        self.output = {p.STDOUT: bytearray(), p.STDERR: bytearray()}
        self.unwritten = 0  # chunks handed to a writer thread, not yet written
        self.ended: FinishedMessage | None = None
        self.marked_running = False
        self.stager: Any = None  # stage=: the job's ClientStager
        #: The server's word on where the job stands (queued, started, requeued), counted, and
        #: the connection (Connection.generation) the latest came on; a cancel's decisions.
        self.news = 0
        self.news_generation = 0
        self.cancel: CancelledJob | None = None

    def _news(self) -> None:
        self.news += 1
        self.news_generation = self.executor._session.conn.generation

    # JobIO
    def write(self, job: ClientJob, fd: int, data: bytes, end: int) -> None:
        if self.capture:
            self.output[fd] += data
            job.written(fd, end)
        else:
            self.unwritten += 1
            self.executor._writer(fd).put(job, data, end)

    def queued(self, job: ClientJob, msg: QueuedMessage) -> None:
        self._news()

    def started(self, job: ClientJob, msg: StartedMessage) -> None:
        self._news()
        if job.received == [0, 0]:  # a new attempt starts from scratch
            for buffer in self.output.values():
                buffer.clear()
        if not self.marked_running:
            self.marked_running = True
            if not self.future.set_running_or_notify_cancel():
                self.executor._cancel(job)  # cancelled while the server was assigning it

    def requeued(self, job: ClientJob, msg: RequeuedMessage) -> None:
        self._news()

    def finished(self, job: ClientJob, msg: FinishedMessage) -> None:
        if self.stager is not None:
            self.stager.close()
        self.ended = msg
        self.executor._settle_when_written(self)

    def failed(self, job: ClientJob, reason: str) -> None:
        if job.ended is not None:
            return  # e.g. a signal that crossed the job's end
        job.ended = p.Finished(job.job_id, job.attempt, 255, "failed")  # the server will not run it
        if job.on_change is not None:
            job.on_change(job)  # the session forgets it (a withdrawn job a restarted server never had)
        self.executor._resolve(self, JobqueueError(f"the server rejected the job: {reason}"))

    # the outcome
    def outcome(self) -> Completed | BaseException:
        """What the future gets, as subprocess.run would return or raise it."""
        msg = self.ended
        assert msg is not None
        out = bytes(self.output[p.STDOUT]) if self.capture else None
        err = bytes(self.output[p.STDERR]) if self.capture else None
        if self.stager is not None and self.stager.failed:
            return JobqueueError(self.stager.failed)
        if msg.reason == "timeout":
            return subprocess.TimeoutExpired(self.args, self.timeout or 0.0, out, err)
        if msg.reason in ("failed", "lost"):
            return JobqueueError(msg.message or f"the job failed ({msg.reason})")
        if msg.reason == "not-found":
            return FileNotFoundError(errno.ENOENT, msg.message)
        if msg.reason == "not-executable":
            return PermissionError(errno.EACCES, msg.message)
        code = msg.status
        if msg.reason in ("signaled", "cancelled", "killed", "out-of-memory") and msg.status > 128:
            code = 128 - msg.status  # subprocess's convention: -N for signal N
        if self.check and code != 0:
            return subprocess.CalledProcessError(code, self.args, out, err)
        return subprocess.CompletedProcess(self.args, code, out, err)
