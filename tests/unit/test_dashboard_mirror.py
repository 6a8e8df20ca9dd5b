"""The dashboard's copy of the state (jobqueue.dashboard.mirror): paging and filters over
many jobs, outcome groups, and a followed job's output (gaps, attempts, re-sent chunks)."""

from __future__ import annotations

import time

from jobqueue import protocol as p
from jobqueue.dashboard.mirror import Mirror, TailBuffer


def _job(i: int, state: str = "queued", **kw: object) -> p.WatchedJob:
    fields: dict[str, object] = dict(job_id=f"j{i:05d}", argv=["make", f"t{i}"], state=state, worker="",
                                     tags=["gpu"] if i % 2 else [], priority=i % 3, attempt=0,
                                     queued=1000.0 + i, since=1000.0 + i)
    fields.update(kw)
    return p.WatchedJob(**fields)  # type: ignore[arg-type]


def _mirror(jobs: list[p.WatchedJob], history: list[p.Outcome] | None = None) -> Mirror:
    m = Mirror()
    m.apply(p.WatchState("s", "1", time.time(), 10.0, [], jobs, history or [], [], True))
    return m


def test_jobs_page_orders_filters_and_pages_10000_queued() -> None:
    jobs = [_job(i) for i in range(10_000)]
    jobs.append(_job(99_999, "running", worker="w1", since=5.0, attempt=1))
    ended = p.Outcome("done1", ["ls"], [], "w1", 1, 2, "exited", "nonzero", 1.0, 2.0, 3.0)
    m = _mirror(jobs, [ended])
    first = m.jobs_page()
    assert first["total"] == 10_002 and first["pages"] == 201 and len(first["rows"]) == 50
    assert first["rows"][0]["id"] == "j99999"  # running first
    assert [r["priority"] for r in first["rows"][1:4]] == [2, 2, 2] and first["rows"][1]["id"] == "j00002"
    last = m.jobs_page(page=200)
    assert [r["id"] for r in last["rows"]] == ["j09999", "done1"] and last["rows"][1]["group"] == "failed"
    assert m.jobs_page(tag="gpu")["total"] == 5001  # the running one too
    assert m.jobs_page(worker="w1", state="running")["total"] == 1
    assert [r["id"] for r in m.jobs_page(text="make t1234")["rows"]] == ["j01234"]
    assert m.jobs_page(state="finished")["rows"][0]["status"] == 2


def test_changes_move_jobs_and_count_outcomes() -> None:
    m = _mirror([_job(1), _job(2)])
    now = time.time()
    done = p.Outcome("j00001", ["make"], [], "w", 1, 0, "exited", "succeeded", now - 3, now - 2, now - 1)
    m.apply(p.Changes(now, [], [_job(2, "running", worker="w")], ["j00001"], [done], []))
    assert set(m.jobs) == {"j00002"} and m.jobs["j00002"].state == "running"
    overview = m.overview()
    assert overview["minute"]["success"] == 1 and overview["running"] == 1 and overview["queued"] == 0


def _out(fd: int, offset: int, data: bytes, attempt: int = 1) -> p.Output:
    return p.Output("j", attempt, fd, offset, data)


def test_tail_buffer_marks_gaps_and_new_attempts_and_drops_repeats() -> None:
    t = TailBuffer("j")
    t.add(_out(1, 0, "héllo\n".encode()[:2]))  # a UTF-8 character split across chunks
    t.add(_out(1, 2, "héllo\n".encode()[2:]))
    t.add(_out(1, 2, "héllo\n".encode()[2:]))  # re-sent after a reconnection: dropped
    t.add(_out(2, 0, b"err\n"))
    t.add(_out(1, 100, b"later\n"))
    t.add(_out(1, 0, b"again\n", attempt=2))
    texts = [(c.get("fd"), c.get("text") or c.get("note")) for c in t.since(0)]
    assert texts == [(1, "h"), (1, "éllo\n"), (2, "err\n"), (1, "93 bytes skipped (the dashboard fell behind)"),
                     (1, "later\n"), (None, "attempt 2: the job runs again from the start"), (1, "again\n")]
    assert t.since(t.seq) == []
