"""A client's job state (:class:`jobqueue.client.ClientJob`), driven by messages alone."""

from __future__ import annotations

from typing import Any

from jobqueue import protocol as p
from jobqueue.client import ClientJob


class Recorder:
    """A JobIO that keeps what the job wrote and how it ended."""

    def __init__(self) -> None:
        self.out: dict[int, bytes] = {1: b"", 2: b""}
        self.ended: Any = None
        self.starts: list[Any] = []

    def write(self, job: ClientJob, fd: int, data: bytes, end: int) -> None:
        self.out[fd] += data
        job.written(fd, end)

    def queued(self, job: ClientJob, msg: Any) -> None: ...
    def requeued(self, job: ClientJob, msg: Any) -> None: ...
    def failed(self, job: ClientJob, reason: str) -> None: ...

    def started(self, job: ClientJob, msg: Any) -> None:
        self.starts.append(msg)

    def finished(self, job: ClientJob, msg: Any) -> None:
        self.ended = msg


def _job() -> tuple[ClientJob, Recorder]:
    io = Recorder()
    job = ClientJob(p.JobSpec([b"x"], {}, b"/", stdin=False), io, "j", proto=p)
    return job, io


def test_end_resent_before_the_resumed_output_waits_for_that_output() -> None:
    """A worker re-sends its job's end as it reconnects, ahead of the output a resume
    re-sends: the client must not end the job with its output missing."""
    job, io = _job()
    job.handle(p.Started("j", 1, 5, "w", "h"))
    job.handle(p.Started("j", 1, 0, "w", "h", resumed=True))
    job.outbox.clear()
    job.handle(p.Finished("j", 1, 4, "exited", offsets=[6, 2]))
    assert io.ended is None
    resubmit = [m for m in job.outbox if isinstance(m, p.Submit)]
    assert resubmit and (resubmit[0].attempt, resubmit[0].running, resubmit[0].offsets) == (1, True, [0, 0])
    job.handle(p.Output("j", 1, 1, 0, b"out!\n\n"))
    job.handle(p.Output("j", 1, 2, 0, b"e\n"))
    job.handle(p.Finished("j", 1, 4, "exited", offsets=[6, 2]))
    assert io.ended.status == 4 and io.out == {1: b"out!\n\n", 2: b"e\n"}


def test_client_that_never_saw_its_job_start_takes_the_output_of_the_attempt_it_missed() -> None:
    job, io = _job()
    job.handle(p.Queued("j", 7, 1))
    job.handle(p.Finished("j", 1, 0, "exited", offsets=[3, 0]))
    assert io.ended is None and job.attempt == 1
    job.handle(p.Output("j", 1, 1, 0, b"hi\n"))
    job.handle(p.Finished("j", 1, 0, "exited", offsets=[3, 0]))
    assert io.ended is not None and io.out[1] == b"hi\n"


def test_end_decided_by_the_server_needs_no_output() -> None:
    job, io = _job()
    job.handle(p.Finished("j", 0, 143, "cancelled"))
    assert io.ended.reason == "cancelled"


def test_closed_output_asks_the_worker_once_drops_the_rest_and_ends_without_it() -> None:
    """Our stdout's reader left: the worker is asked to close the job's pipe (again for a
    later attempt); output still in flight is dropped, and the end does not wait for it."""
    job, io = _job()
    job.close_output(1)  # before the job started: said when it starts
    assert not job.outbox
    job.handle(p.Started("j", 1, 5, "w", "h"))
    assert [m for m in job.outbox if isinstance(m, p.CloseOutput)] == [p.CloseOutput("j", 1, 1)]
    job.outbox.clear()
    job.close_output(1)
    assert not job.outbox
    job.handle(p.Output("j", 1, 1, 0, b"in flight"))
    job.handle(p.Output("j", 1, 2, 0, b"err"))
    job.handle(p.Finished("j", 1, 141, "signaled", offsets=[4096, 3]))  # the worker read more before closing
    assert io.ended.status == 141 and io.out == {1: b"", 2: b"err"}


def test_closed_output_of_one_pipe_for_both_streams() -> None:
    job = ClientJob(p.JobSpec([b"x"], {}, b"/", stdin=False, merge_output=True), Recorder(), "j", proto=p)
    job.handle(p.Started("j", 1, 5, "w", "h"))
    job.close_output(2)
    assert [m for m in job.outbox if isinstance(m, p.CloseOutput)] == [p.CloseOutput("j", 1, 1)]
