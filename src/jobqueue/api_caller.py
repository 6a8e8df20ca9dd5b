"""How the Python API's caller stands, read per submission (see :mod:`jobqueue.caller`,
which jq uses): cheaper ways for a long-lived process that submits thousands of jobs."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable

from .launch import RLIMITS


def caller_environment() -> dict[bytes, bytes]:
    """A copy of os.environb (through its dict when CPython exposes it: a C-level
    copy, not a Python loop over the mapping; every submission takes one)."""
    data = getattr(os.environb, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environb)


class _KeptFd:
    """An fd closed when its holder goes (a thread's local state, at the thread's end)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()

    def __del__(self, close: Callable[[int], None] = os.close) -> None:
        try:
            close(self.fd)  # (bound early: at interpreter exit the os module may be gone already)
        except OSError:
            pass


class _ThreadStatus(threading.local):
    """/proc/thread-self/status, kept open per thread and read again from offset 0 (the
    kernel renders it anew): half the cost of opening it per submission.  Per thread:
    the signal mask is the thread's; reopened after a fork (the fd is the parent's)."""

    kept: _KeptFd | None = None

    def read(self) -> bytes:
        kept = self.kept
        if kept is None or kept.pid != os.getpid():
            try:
                kept = self.kept = _KeptFd(os.open("/proc/thread-self/status", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return b""
        return os.pread(kept.fd, 1 << 16, 0)


thread_status = _ThreadStatus()


def rlimits() -> list[tuple[str, int, int]]:
    """The limits a job takes, by getrlimit (cheaper than /proc/self/limits per submission)."""
    return [(name, *resource.getrlimit(number)) for name, number in RLIMITS.items()]
