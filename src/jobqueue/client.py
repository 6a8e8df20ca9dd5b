"""The client side of the protocol, shared by ``jq`` and the Python API.

:class:`ClientJob` is one job's protocol state (no I/O): it turns server
messages into calls on a :class:`JobIO` (the job's stdio, wherever that is)
and produces the messages to send.  :class:`Session` is one connection to
the server carrying any number of jobs; after a reconnection it re-submits
them, so that the server (even a restarted one) re-attaches each to its
worker or queues it again in its original order.
"""

from __future__ import annotations

import os

from . import config
from . import wire as p
from .connection import Connection, Security

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would slow jq down
    from collections.abc import Callable
    from types import ModuleType
    from typing import IO, Any, Protocol

    from .transports import TransportFactory

    # The messages a job reads, as either module defines them (jobqueue.wire for jq,
    # jobqueue.protocol for the API): the same fields, so one structural type each.
    class QueuedMessage(Protocol):
        job_id: str
        ticket: int
        position: int
        why: str

    class StartedMessage(Protocol):
        job_id: str
        attempt: int
        pid: int
        worker: str
        host: str
        resumed: bool

    class OutputMessage(Protocol):
        job_id: str
        attempt: int
        fd: int
        offset: int
        data: bytes

    class RequeuedMessage(Protocol):
        job_id: str
        attempt: int
        reason: str

    class FinishedMessage(Protocol):
        job_id: str
        attempt: int
        status: int
        reason: str
        message: str
        offsets: list[int]

    class JobIO(Protocol):
        """Where a job's events go (jq's terminal, or the API's buffers)."""

        def write(self, job: ClientJob, fd: int, data: bytes, end: int) -> None:
            """New output; call ``job.written(fd, end)`` once it is consumed."""

        def queued(self, job: ClientJob, msg: QueuedMessage) -> None: ...
        def started(self, job: ClientJob, msg: StartedMessage) -> None: ...
        def requeued(self, job: ClientJob, msg: RequeuedMessage) -> None: ...
        def finished(self, job: ClientJob, msg: FinishedMessage) -> None: ...
        def failed(self, job: ClientJob, reason: str) -> None: ...

#: Stdin kept in memory for a replay; beyond it the spool moves to a temp file.
SPOOL_MEMORY = 4 << 20


def new_job_id() -> str:
    """Short and random (40 bits): ``jobqueue cancel`` takes it by hand.  Drawn
    from a batch (one system call for many; list.pop is atomic: any thread)."""
    try:
        return _spare_ids.pop()
    except IndexError:
        batch = os.urandom(_IDS_AT_ONCE * 5).hex()
        ids = [batch[i:i + 10] for i in range(0, len(batch), 10)]
        _spare_ids.extend(ids[1:])
        return ids[0]


_IDS_AT_ONCE = 64
_spare_ids: list[str] = []


class Spool:
    """All stdin sent to a job so far, kept for a replay when the job is requeued."""

    def __init__(self) -> None:
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0
        self._last = (0, b"")  # the chunk appended last, served without reading it back

    def append(self, data: bytes) -> None:
        if self._file is None and self.size + len(data) > SPOOL_MEMORY:
            import tempfile

            self._file = tempfile.TemporaryFile(prefix="jq-stdin-")
            os.pwrite(self._file.fileno(), self._memory, 0)
            self._memory = bytearray()
        if self._file is not None:
            os.pwrite(self._file.fileno(), data, self.size)
        else:
            self._memory += data
        self._last = (self.size, data)
        self.size += len(data)

    def read(self, offset: int, n: int) -> bytes:
        start, last = self._last
        if offset == start and n >= len(last):
            return last
        if self._file is not None:
            return os.pread(self._file.fileno(), n, offset)
        return bytes(self._memory[offset:offset + n])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ClientJob:
    def __init__(self, spec: Any, io: JobIO, job_id: str | None = None, proto: ModuleType | None = None) -> None:
        """``proto``: the module of the messages, :mod:`jobqueue.wire` (jq's, the default)
        or :mod:`jobqueue.protocol` (msgspec: faster, for the Python API); the same bytes."""
        self.p: Any = proto or p
        self.job_id = job_id or new_job_id()
        self.spec = spec  # a JobSpec of ``proto``
        self.io = io
        self.ticket = 0
        self.attempt = 0
        self.running = False
        self.ended: FinishedMessage | None = None  # once it came
        self.received = [0, 0]  # stdout/stderr bytes received in this attempt
        self.spool = Spool()
        # stdin_eof: our stdin reached EOF (all of it is in the spool); a job
        # without stdin (spec.stdin False) has it at /dev/null and sends none.
        self.stdin_eof = not self.spec.stdin
        self.stdin_sent = 0
        self.stdin_acked = 0
        self.eof_sent = not self.spec.stdin
        self.outbox: list[Any] = []
        #: Our stdout/stderr whose reader has gone (see close_output).
        self.closed_outputs: set[int] = set()
        #: ``--stage``: the job's jobqueue.staging.clientside.ClientStager (set by its creator).
        self.stager: Any = None
        #: Set by the session: called when this job has something to send or has ended.
        self.on_change: Callable[[ClientJob], None] | None = None
        #: The Python API cancelled the job with this signal (0: not): see restore_message.
        self.cancelled_by = 0

    def _post(self, msg: Any) -> None:
        self.outbox.append(msg)
        if self.on_change is not None:
            self.on_change(self)

    # --- to the server ---------------------------------------------------------------

    def submit_message(self) -> Any:
        return self.p.Submit(self.job_id, self.spec, self.ticket, self.attempt, self.running, list(self.received))

    def restore_message(self) -> Any:
        """What a new connection says of this job: its submission, except for a job cancelled
        before we saw it start (jobqueue.api_cancel): submitted again, it would run on a
        restarted server; its cancel instead has a server that still holds it drop it."""
        if self.cancelled_by and not self.running:
            return self.p.Signal(self.job_id, self.cancelled_by)
        return self.submit_message()

    def wants_stdin(self) -> bool:
        """Room to read more of our stdin (read-ahead bounded by the window)."""
        return not self.stdin_eof and self.ended is None and self.spool.size - self.stdin_acked < p.WINDOW

    def feed(self, data: bytes) -> None:
        if data:
            self.spool.append(data)
        else:
            self.stdin_eof = True
        self._send_stdin()

    def written(self, fd: int, end: int) -> None:
        """Output up to ``end`` is consumed: acknowledge it (opens the window)."""
        if self.running and self.ended is None:
            self._post(self.p.Ack(self.job_id, self.attempt, fd, end))

    def signal(self, signum: int) -> None:
        if self.ended is None:
            self._post(self.p.Signal(self.job_id, signum))

    def resize(self, rows: int, cols: int) -> None:
        if self.running and self.ended is None:
            self._post(self.p.Resize(self.job_id, rows, cols))

    def close_output(self, fd: int) -> None:
        """Nobody reads our ``fd`` (1 or 2) any more: the worker closes the job's
        pipe, so the job meets SIGPIPE as it would locally; its output there stops."""
        if fd in self.closed_outputs:
            return
        self.closed_outputs.add(fd)
        if self.spec.merge_output:
            self.closed_outputs.update((p.STDOUT, p.STDERR))
            fd = p.STDOUT  # the job's one pipe
        if self.running and self.ended is None:
            self._post(self.p.CloseOutput(self.job_id, self.attempt, fd))

    def _send_stdin(self) -> None:
        if not self.running or self.ended is not None:
            return
        while self.stdin_sent < self.spool.size and self.stdin_sent - self.stdin_acked < p.WINDOW:
            data = self.spool.read(self.stdin_sent, p.CHUNK_SIZE)
            last = self.stdin_eof and self.stdin_sent + len(data) == self.spool.size
            self._post(self.p.Input(self.job_id, self.attempt, self.stdin_sent, data, last))
            self.stdin_sent += len(data)
            self.eof_sent = last
        if self.stdin_eof and not self.eof_sent and self.stdin_sent == self.spool.size:
            self._post(self.p.Input(self.job_id, self.attempt, self.stdin_sent, b"", True))
            self.eof_sent = True

    # --- from the server -------------------------------------------------------------------

    def handle(self, msg: object) -> None:
        """One message from the server about this job."""
        if self.stager is not None and (isinstance(msg, (self.p.Need, self.p.Results, self.p.ResultData)) or (
                isinstance(msg, self.p.Ack) and msg.fd == p.STAGE_IN)):
            self.stager.handle(msg)
        elif isinstance(msg, self.p.Output):
            self._on_output(msg)
        elif isinstance(msg, self.p.Ack):
            if msg.attempt == self.attempt and msg.fd == p.STDIN:
                self.stdin_acked = max(self.stdin_acked, msg.offset)
                self.stdin_sent = max(self.stdin_sent, self.stdin_acked)
                self._send_stdin()
        elif isinstance(msg, self.p.Started):
            self._on_started(msg)
        elif isinstance(msg, self.p.Queued):
            self.ticket = msg.ticket
            self.io.queued(self, msg)
        elif isinstance(msg, self.p.Requeued):
            if msg.attempt == self.attempt:
                self.running = False
                self.io.requeued(self, msg)
        elif isinstance(msg, self.p.Finished):
            self._on_finished(msg)
        elif isinstance(msg, self.p.Error):
            self.io.failed(self, msg.reason)

    def _on_started(self, msg: StartedMessage) -> None:
        if msg.resumed and self.stager is not None:
            self.stager.resumed(msg.attempt)
        if msg.resumed and msg.attempt == self.attempt:
            self.stdin_sent = self.stdin_acked  # the worker's Ack tells where it stands
        elif msg.attempt > self.attempt or not self.running:
            self.attempt = msg.attempt
            self.received = [0, 0]
            self.stdin_sent = self.stdin_acked = 0
            self.eof_sent = not self.spec.stdin
        self.running = True
        self.io.started(self, msg)
        for fd in sorted(self.closed_outputs)[:1 if self.spec.merge_output else 2]:
            self._post(self.p.CloseOutput(self.job_id, self.attempt, fd))  # a new attempt, or the worker re-attached
        self._send_stdin()

    def _output_missing(self, msg: FinishedMessage) -> bool:
        """Whether the job wrote more than we have received (by the end's byte counts)."""
        if msg.reason in ("cancelled", "lost"):
            return False  # ended by the server: no worker holds output
        if msg.attempt > self.attempt:  # it started while we could not hear of it
            self.attempt, self.running = msg.attempt, True
            self.received = [0, 0]
        return any(sent > have for fd, sent, have in zip((p.STDOUT, p.STDERR), msg.offsets, self.received)
                   if fd not in self.closed_outputs)  # a closed stream's rest is dropped by design

    def _on_output(self, msg: OutputMessage) -> None:
        if msg.attempt != self.attempt or msg.fd not in (p.STDOUT, p.STDERR) or self.ended is not None:
            return
        if msg.fd in self.closed_outputs:  # nobody reads it: sent before the worker closed the pipe
            self.received[msg.fd - 1] = max(self.received[msg.fd - 1], msg.offset + len(msg.data))
            return
        have = self.received[msg.fd - 1]
        end = msg.offset + len(msg.data)
        if msg.offset > have or end <= have:
            return  # a gap (re-sent after a resume) or a duplicate
        self.received[msg.fd - 1] = end
        self.io.write(self, msg.fd, msg.data[have - msg.offset:], end)

    def _on_finished(self, msg: FinishedMessage) -> None:
        if self.ended is not None or msg.attempt < self.attempt:
            return
        if self._output_missing(msg):
            # The end overtook output that is still to come (a worker re-sends its end
            # as it reconnects, before the output a resume re-sends): ask for the rest
            # from what we have; the resumed stream ends with the end again.
            self._post(self.submit_message())
            return
        self.ended = msg
        self.spool.close()
        if msg.reason not in ("cancelled", "lost"):  # a worker holds the end until released
            self._post(self.p.Release(self.job_id, msg.attempt))
        elif self.on_change is not None:
            self.on_change(self)  # nothing to send, but the session forgets the job
        self.io.finished(self, msg)


class Session:
    """One connection to the server carrying any number of jobs."""

    def __init__(
        self,
        endpoint: str,
        *,
        security: Security | None = None,
        connect_timeout: float = config.CONNECT_TIMEOUT,
        grace: float = config.SERVER_GRACE,
        name: str = "jq",
        proto: ModuleType | None = None,
        transport: TransportFactory | None = None,
    ) -> None:
        """``proto`` as for :class:`ClientJob` (the session's jobs must use the same);
        ``transport`` as for :class:`Connection`."""
        self.p: Any = proto or p
        self.id = os.urandom(8).hex()
        self.name = name
        self.jobs: dict[str, ClientJob] = {}
        self._changed: dict[str, ClientJob] = {}  # jobs with messages to send, or ended
        self.conn = Connection(endpoint, self._hello, self.p.decode_to_client, proto=self.p,
                               connect_timeout=connect_timeout, grace=grace, security=security,
                               transport=transport)
        self.conn.on_connect = self._restore

    def _hello(self) -> Any:
        from . import __version__

        return self.p.ClientHello(p.PROTOCOL_VERSION, self.id, self.name, os.uname().nodename, os.getpid(), __version__)

    def _restore(self) -> list[Any]:
        """After (re)connecting: every unfinished job again (new, queued or running)."""
        return [job.restore_message() for job in self.jobs.values() if job.ended is None]

    def open(self, now: float) -> None:
        self.conn.open(now)

    def add(self, job: ClientJob) -> None:
        """Carry this job (the caller sends its submission, or the next connect does)."""
        self.jobs[job.job_id] = job
        job.on_change = self._job_changed
        if job.outbox or job.ended is not None:
            self._changed[job.job_id] = job

    def _job_changed(self, job: ClientJob) -> None:
        self._changed[job.job_id] = job

    def submit(self, job: ClientJob) -> None:
        self.add(job)
        if self.conn.socket is not None:
            self.conn.send(job.submit_message())

    def receive(self, now: float) -> None:
        for msg in self.conn.receive(now):
            job_id = getattr(msg, "job_id", "")
            job = self.jobs.get(job_id)
            if job is not None:
                job.handle(msg)
        self.flush()

    def flush(self) -> None:
        """Send what the jobs posted; forget the jobs that ended."""
        changed, self._changed = self._changed, {}
        for job in changed.values():
            for msg in job.outbox:
                self.conn.send(msg)
            job.outbox.clear()
            if job.ended is not None:
                self.jobs.pop(job.job_id, None)

    def close(self) -> None:
        if self.conn.socket is not None and self.conn.welcomed:
            self.conn.send(self.p.Bye())
        self.conn.close(wait=1.0)
