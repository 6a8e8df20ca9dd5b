"""jq's terminal side: the :class:`~jobqueue.client.JobIO` of jq, whose stdio is the job's.

It writes the job's output to our fds (a :class:`~jobqueue.writer.Writer` thread per fd),
catches the signals jq forwards, puts our terminal in raw mode for ``-t`` and says what
happens to the job on stderr.  :mod:`jobqueue.jq` loads it once the options are parsed.
"""

from __future__ import annotations

# _signal is the C core of signal (the same functions and constants) without the
# enum wrappers, which cost jq about 4 ms of start-up for every job.
import _signal as signal
import os

from .waker import Waker

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: jq imports nothing it does not use
    from typing import Any

    from .client import ClientJob
    from .client import FinishedMessage as Finished
    from .client import QueuedMessage as Queued
    from .client import RequeuedMessage as Requeued
    from .client import StartedMessage as Started
    from .jq import JqOptions
    from .writer import Writer

#: Signals delivered to the job's process group (SIGWINCH becomes a resize).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Terminal:
    """The job's stdio is this process's: the :class:`~jobqueue.client.JobIO` of jq."""

    def __init__(self, options: JqOptions) -> None:
        self.options = options
        self.result: int | None = None
        self.message = ""
        self.has_started = False
        self.waker = Waker()
        self._written: list[tuple[Any, int, int]] = []  # appended by writer threads
        self._broken: list[int] = []  # our output fds that can no longer be written (writer threads)
        self._writers: dict[int, Writer] = {}
        #: Our stdout/stderr that are pipes: polled for the error that says their reader left.
        self.watched: tuple[int, ...] = ()
        self.signals: list[int] = []
        self.queue_timed_out = False
        #: Why no connected worker could run the job, as the server said when it queued it.
        self.why = ""
        #: Restores our terminal after -t made it raw (when the job started, so
        #: that Ctrl-C still cancels a queued job).
        self.restore_terminal: Any = None
        #: The server's word on where the job stands (queued, started, requeued), counted,
        #: and the jobqueue.jq_signals.SignalGate of signals it may not have (from jq's first).
        self.job_news = 0
        #: The connection (jobqueue.connection.Connection.generation) the latest of it came on.
        self.news_generation = 0
        self.gate: Any = None

    # JobIO
    def write(self, job: ClientJob, fd: int, data: bytes, end: int) -> None:
        writer = self._writer(fd)
        if writer.broken:
            job.written(fd, end)  # dropped, as a closed pipe would
        else:
            writer.put(job, data, end)

    def _writer(self, fd: int) -> Writer:
        writer = self._writers.get(fd)
        if writer is None:
            from .writer import Writer  # on the first output: a job without output never loads it

            writer = self._writers[fd] = Writer(fd, self._on_written, self._on_broken)
            writer.start()
        return writer

    def _on_written(self, job: Any, fd: int, end: int) -> None:
        self._written.append((job, fd, end))
        self.wake()

    def _on_broken(self, fd: int, error: OSError | None) -> None:
        if error is not None:
            self.note(f"cannot write the job's output to fd {fd}: {error.strerror}; closing the job's pipe")
        self._broken.append(fd)
        self.wake()

    def reader_left(self, fd: int) -> None:
        """Polling says the pipe on ``fd`` has no reader any more (before we wrote to it)."""
        self.watched = tuple(w for w in self.watched if w != fd)
        self._writer(fd).mark_broken(None)

    def broken_fds(self) -> list[int]:
        """Our output fds found broken since the last call; raises a writer's bug."""
        for writer in self._writers.values():
            if writer.failure is not None:
                raise writer.failure
        broken, self._broken = self._broken, []
        return broken

    def wake(self) -> None:
        self.waker.wake()

    def queued(self, job: ClientJob, msg: Queued) -> None:
        self.job_news += 1
        if self.options.verbose:
            self.note(f"job {job.job_id} queued ({msg.position} waiting)")
        if msg.why:  # it waits for a worker that may never come: say so now
            self.why = msg.why
            self.note(f"job {job.job_id} waits for a worker that can run it: {msg.why}")

    def started(self, job: ClientJob, msg: Started) -> None:
        self.has_started = True
        self.job_news += 1
        if self.options.verbose and job.stager is not None and not msg.resumed:
            self.say(job.stager.summary_sent())
        if self.options.tty:  # the window may have changed since the job was submitted
            if self.restore_terminal is None:
                self.restore_terminal = _raw_terminal() or (lambda: None)
            self.signals.append(signal.SIGWINCH)
            self.wake()
        if self.options.verbose:
            what = "re-attached (the server restarted)" if msg.resumed else "started"
            self.note(f"job {job.job_id} {what} on worker {msg.worker} ({msg.host}), attempt {msg.attempt}")

    def requeued(self, job: ClientJob, msg: Requeued) -> None:
        self.has_started = False
        self.job_news += 1
        self.note(f"job {job.job_id}: {msg.reason}; running it again from the start on the next ready worker")

    def finished(self, job: ClientJob, msg: Finished) -> None:
        if job.stager is not None:
            from .staging.jqside import staging_finished  # loaded already: --stage was given

            if staging_finished(job, self):
                return
        if self.queue_timed_out and msg.reason == "cancelled":
            self.result, self.message = 255, (
                f"job {job.job_id} did not start within {self.options.queue_timeout:g}s (--queue-timeout"
                f"{'; ' + self.why if self.why else ''}); cancelled it")
        elif msg.reason in ("failed", "lost"):
            self.result, self.message = 255, msg.message
        else:
            self.result = msg.status
            if msg.reason in ("not-found", "not-executable", "out-of-memory"):
                self.message = msg.message

    def failed(self, job: ClientJob, reason: str) -> None:
        self.result, self.message = 255, f"the server rejected the job: {reason}"

    def note(self, text: str) -> None:
        self.say(f"jq: {text}")

    def say(self, line: str) -> None:
        try:
            os.write(2, os.fsencode(line) + b"\n")
        except OSError:
            pass

    # signals
    def install(self, ignored: list[int]) -> None:
        """Catch the signals we forward, except those ignored when we started: the
        job ignores them too (as a local command would), and so do we."""
        signal.set_wakeup_fd(self.waker.write_fd, warn_on_full_buffer=False)
        for signum in (*FORWARDED, signal.SIGWINCH):
            if signum not in ignored:
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def drain_wakeups(self) -> list[tuple[Any, int, int]]:
        self.waker.drain()
        done = []
        while self._written:
            done.append(self._written.pop(0))
        return done

    @property
    def wake_fd(self) -> int:
        return self.waker.fileno()

    def flush(self, timeout: float) -> None:
        for writer in self._writers.values():
            writer.flush(timeout)


def _raw_terminal() -> Any:
    """Put our terminal in raw mode; returns the function that restores it."""
    import atexit
    import termios
    import tty

    if not os.isatty(0):
        return None
    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSADRAIN)  # keep what was typed while the job was queued

    def restore() -> None:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)

    atexit.register(restore)
    return restore
