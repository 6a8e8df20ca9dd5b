"""The self-pipe waker: a wake-up from another thread is never lost."""

from __future__ import annotations

import os
import select

import pytest

from jobqueue.waker import Waker


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_a_wake_up_racing_a_drain_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread wakes the loop exactly while it drains the pipe: the loop
    has either its byte still to read or a clear flag, so the next wake-up
    writes one (never a set flag with an empty pipe: a loop asleep for good)."""
    waker = Waker()
    waker.wake()
    real_read, raced = os.read, []

    def read_while_another_thread_wakes(fd: int, n: int) -> bytes:
        if not raced:
            raced.append(True)
            waker.wake()
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_while_another_thread_wakes)
    waker.drain()
    monkeypatch.undo()
    assert raced
    waker.wake()
    assert readable(waker.fileno()), "a wake-up was lost: the loop would sleep with work posted"
    waker.drain()
    assert not readable(waker.fileno())
    waker.close()


def test_repeated_wake_ups_write_once_until_drained() -> None:
    waker = Waker()
    for _ in range(1000):
        waker.wake()
    assert len(os.read(waker.fileno(), 4096)) == 1
    waker.close()
