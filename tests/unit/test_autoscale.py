"""The autoscaler's decisions, without processes: time, waiting jobs and workers in, spawn ids out."""

from __future__ import annotations

from jobqueue.autoscale import Autoscaler, SpawnPolicy, WorkerView
from jobqueue.events import SpawnArrived, SpawnFailed

NONE: frozenset[str] = frozenset()
GPU = frozenset({"gpu"})


def scaler(max_workers: int = 4, tags: frozenset[str] = NONE, timeout: float = 10.0) -> Autoscaler:
    return Autoscaler(SpawnPolicy("true", max_workers=max_workers, tags=tags, timeout=timeout,
                                  backoff_first=1.0, backoff_max=8.0))


def test_spawns_one_per_waiting_job_up_to_the_maximum() -> None:
    a = scaler(max_workers=3)
    assert len(a.step(0.0, {NONE: 2}, [])) == 2
    assert len(a.step(0.1, {NONE: 20}, [])) == 1  # 2 starting + 1 more = 3
    assert a.step(0.2, {NONE: 20}, []) == []
    assert a.last_room == 0


def test_no_spawn_without_waiting_jobs() -> None:
    assert scaler().step(0.0, {}, []) == []


def test_pending_spawns_cover_waiting_jobs() -> None:
    a = scaler()
    first = a.step(0.0, {NONE: 1}, [])
    assert len(first) == 1
    assert a.step(0.5, {NONE: 1}, []) == []  # the one starting will take it


def test_free_slots_of_able_workers_cover_jobs() -> None:
    a = scaler()
    idle = WorkerView(NONE, free=2)
    assert a.step(0.0, {NONE: 2}, [idle]) == []
    assert len(a.step(0.0, {NONE: 3}, [idle])) == 1


def test_draining_or_unable_workers_do_not_cover_jobs() -> None:
    a = scaler(tags=GPU)
    workers = [WorkerView(NONE, free=5), WorkerView(GPU, free=5, draining=True)]
    assert len(a.step(0.0, {GPU: 2}, workers)) == 2


def test_only_jobs_whose_tags_are_spawn_tags_count() -> None:
    a = scaler(tags=GPU)
    assert a.step(0.0, {frozenset({"gpu", "big"}): 3, frozenset({"big"}): 1}, []) == []
    assert len(a.step(0.0, {GPU: 1, NONE: 1}, [])) == 2  # untagged jobs run anywhere
    assert a.why_waiting(["big"], 0.0) == "not autoscaled: tag big is not in --spawn-tags"


def test_connected_spawned_workers_count_towards_the_maximum() -> None:
    a = scaler(max_workers=2)
    busy_spawned = WorkerView(NONE, free=0, spawn_id="old-1")
    busy_own = WorkerView(NONE, free=0)
    assert len(a.step(0.0, {NONE: 5}, [busy_spawned, busy_own])) == 1


def test_arrival_ends_pending() -> None:
    a = scaler()
    (spawn,) = a.step(0.0, {NONE: 1}, [])
    a.arrived(spawn, 0.4)
    assert a.pending == {}
    assert a.events[-1] == SpawnArrived(spawn, 0.4)
    a.arrived("unknown-7", 0.5)  # a worker of an earlier server: ignored
    assert len(a.events) == 1


def test_late_spawn_fails_and_backs_off_doubling_then_probes_one_at_a_time() -> None:
    a = scaler(timeout=10.0)
    assert len(a.step(0.0, {NONE: 3}, [])) == 3
    assert a.step(10.0, {NONE: 3}, []) == []  # all three late: failures 1, 2, 3
    assert a.failures == 3
    assert a.backoff_until == 14.0  # 1 s doubled twice
    assert isinstance(a.events[-1], SpawnFailed)
    assert "no worker connected within 10s" in a.events[-1].why
    assert "next spawn in 4s" in a.why_waiting([], 10.0)
    assert a.step(13.9, {NONE: 3}, []) == []
    probe = a.step(14.0, {NONE: 3}, [])
    assert len(probe) == 1  # one at a time until one works
    assert a.step(14.5, {NONE: 3}, []) == []
    a.arrived(probe[0], 15.0)
    assert a.failures == 0
    assert len(a.step(15.0, {NONE: 3}, [WorkerView(NONE, 0, spawn_id=probe[0])])) == 3


def test_backoff_is_capped() -> None:
    a = scaler(timeout=1.0)
    now = 0.0
    for _ in range(10):
        now = max(now, a.backoff_until)
        a.step(now, {NONE: 1}, [])
        now += 1.0
        a.step(now, {NONE: 1}, [])
    assert a.backoff_until - now == 8.0


def test_command_failing_before_its_worker_came_is_a_failure() -> None:
    a = scaler()
    one, two = a.step(0.0, {NONE: 2}, [])
    a.exited(one, 0, 0.1)  # e.g. sbatch submitted it: still pending
    assert one in a.pending
    a.exited(two, 1, 0.1)
    assert two not in a.pending and a.failures == 1
    assert isinstance(a.events[-1], SpawnFailed)
    assert "exited with status 1" in a.events[-1].why
    a.arrived(one, 0.2)
    a.exited(one, 3, 0.3)  # it came, then failed: not the spawn's fault
    assert a.failures == 0


def test_next_deadline_is_the_earliest_timer() -> None:
    a = scaler(timeout=10.0)
    assert a.next_deadline() is None
    a.step(0.0, {NONE: 1}, [])
    a.step(3.0, {NONE: 2}, [])
    assert a.next_deadline() == 10.0


def test_why_waiting_names_starting_workers_and_the_limit() -> None:
    a = scaler(max_workers=1)
    a.step(0.0, {NONE: 2}, [])
    assert a.why_waiting([], 2.0) == "1 spawned worker(s) starting, the oldest for 2s"
    (spawn_id,) = a.pending
    a.arrived(spawn_id, 2.5)
    a.step(3.0, {NONE: 1}, [WorkerView(NONE, 0, spawn_id=spawn_id)])
    assert a.why_waiting([], 3.0) == "autoscaling is at its limit (--spawn-max 1)"
    assert a.starting(3.0) == []

