"""The broker at scale: 10,000 queued jobs cost little memory each, and
assigning a job does not get slower as the queue grows."""

from __future__ import annotations

import time
import tracemalloc

from jobqueue import protocol as p
from jobqueue.broker import Broker

#: Bookkeeping per queued job, on top of its command line and environment
#: (README "Guarantees" states this bound).
BYTES_PER_QUEUED_JOB = 1024


def _broker_with_queue(n: int) -> Broker:
    b = Broker(0.0, restart_hold=0.0, wall_clock_ns=1)
    b.receive(b"c", p.encode(p.ClientHello(p.PROTOCOL_VERSION, "S")), 0.0)
    for i in range(n):
        b.receive(b"c", p.encode(p.Submit(f"{i:010x}", p.JobSpec([b"true"], {}, b"/"))), 0.0)
    return b


def test_memory_per_queued_job_is_small() -> None:
    messages = [p.encode(p.Submit(f"{i:010x}", p.JobSpec([b"true"], {}, b"/"))) for i in range(10_000)]
    b = _broker_with_queue(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for m in messages:
            b.receive(b"c", m, 0.0)
        per_job = (tracemalloc.get_traced_memory()[0] - before) / len(messages)
    finally:
        tracemalloc.stop()
    assert len(b.jobs) == 10_000
    assert per_job < BYTES_PER_QUEUED_JOB, per_job


def _seconds_per_assignment(queued: int, rounds: int = 2000) -> float:
    """Time for a worker's Finished to be answered with the next Assign."""
    b = _broker_with_queue(queued + rounds)
    b.receive(b"w", p.encode(p.WorkerHello(p.PROTOCOL_VERSION, "W", "w", "h", 1, "0", 1)), 0.0)
    finished = [p.encode(p.Finished(f"{i:010x}", 1, 0, "exited")) for i in range(rounds)]
    start = time.perf_counter()
    for message in finished:
        out = b.receive(b"w", message, 0.0)
        assert any(isinstance(s.message, p.AssignRaw) for s in out)
    return (time.perf_counter() - start) / rounds


def test_assignment_cost_does_not_grow_with_queue_length() -> None:
    small = min(_seconds_per_assignment(100) for _ in range(3))
    large = min(_seconds_per_assignment(10_000) for _ in range(3))
    # A heap costs O(log n): log(12000)/log(2100) is ~1.2; allow noise, fail on linear growth (~100x).
    assert large < small * 3, (small, large)
