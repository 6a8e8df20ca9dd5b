"""Writing a job's output to one of our fds in a thread of its own (jq's and the API's).

Built on ``_thread`` (the C core of threading) and ``_collections.deque``: ``import
threading`` loads collections, functools and more, about 3.5 ms of CPU that every
``jq`` job with output paid before its first byte (bench/ANALYSIS.md).
"""

from __future__ import annotations

import _thread
import errno
import os
from _collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: jq imports nothing it does not use
    from collections.abc import Callable
    from typing import Any


class Writer:
    """Writes one output fd in its own thread, so a slow reader stalls only the
    job's stream (by not acknowledging it), never jq's heartbeats."""

    def __init__(self, fd: int, on_written: Callable[[Any, int, int], None],
                 on_broken: Callable[[int, OSError | None], None] | None = None) -> None:
        self.fd = fd
        self.queue: deque[tuple[Any, bytes, int] | None] = deque()
        self.on_written = on_written
        #: Called once when ``fd`` can no longer be written (None: EPIPE, its reader left).
        self.on_broken = on_broken
        self.broken = False
        #: An unexpected exception that ended the thread (a bug: the main loop reports it).
        self.failure: BaseException | None = None
        # The queue and the two flags below change only under _mutex.
        self._mutex = _thread.allocate_lock()
        #: Held while the thread sleeps for want of work; put() releases it once to wake it.
        self._wakeup = _thread.allocate_lock()
        self._wakeup.acquire()
        self._sleeping = False
        #: Held while something is queued or being written: flush() waits for it.
        self._busy = _thread.allocate_lock()
        self._is_busy = False

    def start(self) -> None:
        _thread.start_new_thread(self.run, ())  # like a daemon thread: jq leaves by os._exit

    def put(self, job: Any, data: bytes, end: int) -> None:
        self._enqueue((job, data, end))

    def _enqueue(self, item: tuple[Any, bytes, int] | None) -> None:
        with self._mutex:
            if not self._is_busy:
                self._is_busy = True
                self._busy.acquire()  # at most as long as a flush() looking at it holds it
            self.queue.append(item)
            if self._sleeping:
                self._sleeping = False
                self._wakeup.release()

    def _take(self) -> tuple[Any, bytes, int] | None:
        """The next item, sleeping until there is one; idle (for flush) meanwhile."""
        while True:
            with self._mutex:
                if self.queue:
                    return self.queue.popleft()
                self._idle()
                self._sleeping = True
            self._wakeup.acquire()

    def _idle(self) -> None:
        if self._is_busy:  # (under _mutex)
            self._is_busy = False
            self._busy.release()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug: hand it to the main loop, which reports it
            self.failure = e
            with self._mutex:
                self._idle()
            if self.on_broken is not None:
                self.on_broken(self.fd, None)

    def _run(self) -> None:
        while True:
            item = self._take()
            if item is None:
                with self._mutex:
                    self._idle()
                return
            job, data, end = item
            self._write_all(data)
            self.on_written(job, self.fd, end)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.broken:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as e:
                self.mark_broken(None if e.errno in (errno.EPIPE, errno.EBADF) else e)
                return
            view = view[n:]

    def mark_broken(self, error: OSError | None) -> None:
        """Nobody reads any more (or the fd fails): drop the rest, like a closed pipe."""
        if not self.broken:
            self.broken = True
            if self.on_broken is not None:
                self.on_broken(self.fd, error)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written (False: ``timeout`` seconds passed first)."""
        if not self._busy.acquire(timeout=max(timeout, 0.0)):
            return False
        self._busy.release()
        return True

    def close(self) -> None:
        """End the thread once everything queued is written."""
        self._enqueue(None)
