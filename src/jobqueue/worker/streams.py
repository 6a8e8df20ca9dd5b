"""A run's stdio bookkeeping, without file descriptors: what was read from its
output streams and not yet acknowledged, and what its stdin has been sent and
has taken."""

from __future__ import annotations

from collections import deque


class OutStream:
    """One output stream of a job: bytes read so far, and those not yet acknowledged."""

    def __init__(self, open: bool = True) -> None:
        self.open = open  # not yet at EOF
        self.offset = 0  # bytes read from the job so far
        self.acked = 0
        self.pending: deque[tuple[int, bytes]] = deque()  # (offset, data), unacknowledged

    @property
    def in_flight(self) -> int:
        return self.offset - self.acked

    def add(self, data: bytes) -> int:
        start = self.offset
        self.pending.append((start, data))
        self.offset += len(data)
        return start

    def ack(self, offset: int) -> None:
        self.acked = max(self.acked, min(offset, self.offset))
        while self.pending and self.pending[0][0] + len(self.pending[0][1]) <= self.acked:
            self.pending.popleft()

    def since(self, offset: int) -> list[tuple[int, bytes]]:
        """Unacknowledged chunks from ``offset`` on (for a re-send)."""
        self.ack(offset)
        out = []
        for start, data in self.pending:
            if start + len(data) > offset:
                cut = max(0, offset - start)
                out.append((start + cut, data[cut:]))
        return out


class StdinBuffer:
    """A job's stdin: received bytes not yet written, chunk by chunk (no joins, no memmove)."""

    def __init__(self, open: bool) -> None:
        self.open = open  # the pipe (or pty) to the job is still open
        self.chunks: list[memoryview] = []
        self.offset = 0  # bytes received (the next expected offset)
        self.written = 0  # bytes the job took (or that were swallowed once it closed its stdin)
        self.eof = False  # the client has no more

    def receive(self, offset: int, data: bytes, eof: bool) -> bool:
        """Take an Input; False if it leaves a gap (bytes before it are missing)."""
        if offset > self.offset:
            return False
        data = data[self.offset - offset:]
        self.offset += len(data)
        if not self.open:  # the job closed its stdin: swallow (acknowledged as written)
            self.written = self.offset
        elif data:
            self.chunks.append(memoryview(data))
        self.eof = self.eof or eof
        return True

    def accepted(self, count: int) -> None:
        """The job took ``count`` bytes from the front of the chunks."""
        self.written += count
        chunks = self.chunks
        while count and chunks:
            if count < len(chunks[0]):
                chunks[0] = chunks[0][count:]
                return
            count -= len(chunks[0])
            del chunks[0]

    def broken(self) -> None:
        """The job closed its stdin: what it did not take counts as written (swallowed)."""
        self.written = self.offset
        self.chunks.clear()
        self.open = False

    @property
    def should_close(self) -> bool:
        """Everything the client sent was written and it sent EOF."""
        return self.open and self.eof and not self.chunks
