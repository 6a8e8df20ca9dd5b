"""jq's output writer (:class:`jobqueue.writer.Writer`): one thread per fd, on a real pipe."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from jobqueue.writer import Writer

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self) -> None:
        self.written: list[tuple[object, int, int]] = []
        self.broken: list[tuple[int, OSError | None]] = []
        self.lock = threading.Lock()

    def on_written(self, job: object, fd: int, end: int) -> None:
        with self.lock:
            self.written.append((job, fd, end))

    def on_broken(self, fd: int, error: OSError | None) -> None:
        self.broken.append((fd, error))


def read_all(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_chunks_are_written_in_order_and_each_acknowledged_after_its_bytes() -> None:
    r, w = os.pipe()
    rec = Recorder()
    writer = Writer(w, rec.on_written, rec.on_broken)
    writer.start()
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    end = 0
    for chunk in chunks:
        end += len(chunk)
        writer.put("job", chunk, end)
    assert read_all(r, end) == b"".join(chunks)
    assert writer.flush(10.0)
    assert [e for _, _, e in rec.written] == list(itertools.accumulate(map(len, chunks)))
    assert rec.broken == []
    writer.close()
    os.close(r)
    os.close(w)


def test_flush_waits_for_a_slow_reader_and_says_when_it_gave_up() -> None:
    r, w = os.pipe()
    rec = Recorder()
    writer = Writer(w, rec.on_written)
    writer.start()
    assert writer.flush(0.0)  # nothing queued: idle at once
    big = b"x" * (1 << 20)  # more than the pipe holds: the thread blocks in write
    writer.put("job", big, len(big))
    assert not writer.flush(0.05)
    reader = threading.Thread(target=lambda: read_all(r, len(big)))
    reader.start()
    assert writer.flush(10.0)
    reader.join()
    assert rec.written == [("job", w, len(big))]
    writer.close()
    os.close(r)
    os.close(w)


def test_a_reader_that_left_breaks_the_writer_once_and_the_rest_is_dropped() -> None:
    r, w = os.pipe()
    os.close(r)
    rec = Recorder()
    writer = Writer(w, rec.on_written, rec.on_broken)
    writer.start()
    for i in range(3):
        writer.put("job", b"data", 4 * (i + 1))
    assert writer.flush(10.0)
    assert rec.broken == [(w, None)]  # EPIPE: the reader left, not an error to report
    assert [e for _, _, e in rec.written] == [4, 8, 12]  # still acknowledged, as a closed pipe drops them
    writer.close()
    os.close(w)


def test_close_ends_the_thread_after_what_was_queued() -> None:
    r, w = os.pipe()
    rec = Recorder()
    ended = threading.Event()

    class Watched(Writer):
        def run(self) -> None:
            super().run()
            ended.set()

    writer = Watched(w, rec.on_written)
    writer.start()
    writer.put("job", b"last words", 10)
    assert not ended.wait(0.05)  # waiting for more
    writer.close()
    assert read_all(r, 10) == b"last words"
    assert ended.wait(10)
    assert rec.written == [("job", w, 10)]
    os.close(r)
    os.close(w)


def test_a_bug_in_the_thread_is_handed_over_and_does_not_hang_flush() -> None:
    r, w = os.pipe()
    rec = Recorder()

    def boom(job: object, fd: int, end: int) -> None:
        raise RuntimeError("boom")

    writer = Writer(w, boom, rec.on_broken)
    writer.start()
    writer.put("job", b"x", 1)
    assert writer.flush(10.0)
    assert isinstance(writer.failure, RuntimeError)
    assert rec.broken == [(w, None)]
    os.close(r)
    os.close(w)
