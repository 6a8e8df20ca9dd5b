"""A self-pipe that wakes a poll loop: from a signal handler (as the
interpreter's wakeup fd) or from another thread.  Imports only ``os``: jq uses it."""

from __future__ import annotations

import os


class Waker:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        #: A wake-up is written and not yet drained: another would change nothing
        #: (saves a system call per Executor.submit in a burst).
        self._pending = False

    def fileno(self) -> int:
        """The end to poll for reading."""
        return self._read

    @property
    def write_fd(self) -> int:
        """The end for :func:`signal.set_wakeup_fd`."""
        return self._write

    def wake(self) -> None:
        """Wake the loop; what the caller did before this call is seen by the loop's
        next round, which starts with :meth:`drain`."""
        if self._pending:
            return
        self._pending = True
        try:
            os.write(self._write, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already (or the waker is closed)

    def drain(self) -> None:
        """Consume pending wake-ups (call when :meth:`fileno` polled readable, before
        looking at what the wakers asked for).  The pipe is emptied before the
        flag is cleared: the other order could swallow the byte of a wake-up that
        came in between and leave the flag set with nothing to wake the loop."""
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._pending = False

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
