"""Writing a job's output to one of our fds in a thread of its own (jq's and the API's)."""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: jq imports nothing it does not use
    from collections.abc import Callable
    from typing import Any


class Writer:
    """Writes one output fd in its own thread, so a slow reader stalls only the
    job's stream (by not acknowledging it), never jq's heartbeats.  (threading
    is imported here, on the first output: jq without output never loads it.)"""

    def __init__(self, fd: int, on_written: Callable[[Any, int, int], None],
                 on_broken: Callable[[int, OSError | None], None] | None = None) -> None:
        import threading
        from collections import deque

        self.fd = fd
        self.queue: deque[tuple[Any, bytes, int] | None] = deque()
        self.ready = threading.Condition()
        self.on_written = on_written
        #: Called once when ``fd`` can no longer be written (None: EPIPE, its reader left).
        self.on_broken = on_broken
        self.broken = False
        #: An unexpected exception that ended the thread (a bug: the main loop reports it).
        self.failure: BaseException | None = None
        self.idle = threading.Event()
        self.idle.set()
        self.thread: threading.Thread = threading.Thread(target=self.run, daemon=True, name=f"jq-writer-{fd}")

    def start(self) -> None:
        self.thread.start()

    def put(self, job: Any, data: bytes, end: int) -> None:
        with self.ready:
            self.idle.clear()
            self.queue.append((job, data, end))
            self.ready.notify()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug: hand it to the main loop, which reports it
            self.failure = e
            self.idle.set()
            if self.on_broken is not None:
                self.on_broken(self.fd, None)

    def _run(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.idle.set()
                    self.ready.wait()
                item = self.queue.popleft()
            if item is None:
                self.idle.set()
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
        return self.idle.wait(timeout)

    def close(self) -> None:
        """End the thread once everything queued is written."""
        with self.ready:
            self.queue.append(None)
            self.ready.notify()
