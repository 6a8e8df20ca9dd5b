"""Resources: parsing, the fitting rules, the scheduler's fairness, and a property
test of the broker handing out resources (nothing over-committed, no item held
twice, every job that fits a worker eventually runs)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import protocol as p
from jobqueue import resources as r
from jobqueue.jobstate import JobState

from .test_broker import Harness

G = 1 << 30


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("16G", 16 * G), ("512M", 512 << 20), ("1.5G", 3 * G // 2),
                                        ("64GiB", 64 * G), ("2gb", 2 * G), ("1024", 1024), ("1T", 1 << 40)])
def test_sizes(text: str, size: int) -> None:
    assert r.parse_size(text) == size


@pytest.mark.parametrize("text", ["12Q", "", "G", "1.2.3G", "-1G", "abc", "1e9"])
def test_bad_sizes_say_what_is_accepted(text: str) -> None:
    with pytest.raises(r.ResourceError, match="bad size .*K, M, G, T or P"):
        r.parse_size(text)


def test_format_size() -> None:
    assert [r.format_size(n) for n in (16 * G, 3 * G // 2, 100, 1 << 20)] == ["16G", "1.5G", "100", "1M"]


def test_worker_declarations() -> None:
    assert r.parse_declaration("licence=3") == r.Pool("licence", 3)
    assert r.parse_declaration("fpga=a,b") == r.Pool("fpga", 2, ("a", "b"))
    assert r.parse_declaration("gpus=2") == r.Pool("gpus", 2, ("0", "1"))
    assert r.parse_declaration("mem=2G") == r.Pool("mem", 2 * G)
    assert r.parse_gpus("0,1,2,3", lambda: ()) == r.Pool("gpus", 4, ("0", "1", "2", "3"))
    assert r.parse_gpus("2", lambda: ()) == r.Pool("gpus", 2, ("0", "1"))
    assert r.parse_gpus("auto", lambda: ("5", "7")).items == ("5", "7")
    for bad in ("=3", "licence", "licence=", "1x=2", "fpga=a,a", "fpga=a,,b"):
        with pytest.raises(r.ResourceError):
            r.parse_declaration(bad)
    with pytest.raises(r.ResourceError, match="--gpus takes auto"):
        r.parse_gpus("-1", lambda: ())
    with pytest.raises(r.ResourceError, match="declared twice"):
        r.worker_pools(4, G, None, [r.Pool("x", 1), r.Pool("x", 2)])


def test_gpu_detection() -> None:
    smi = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-2)\n"
    assert r.gpus_from_nvidia_smi(smi) == ("0", "1")
    assert r.gpus_from_nvidia_smi("No devices were found") == ()
    assert r.gpus_from_visible_devices("2,3") == ("2", "3")
    assert r.gpus_from_visible_devices("") == r.gpus_from_visible_devices("-1") == ()


def test_job_requests() -> None:
    assert r.parse_request_option("--cpus", "8") == ("cpus", 8)
    assert r.parse_request_option("--mem", "16G") == ("mem", 16 * G)
    assert r.parse_request_option("--gpus", "1") == ("gpus", 1)
    assert r.parse_request_option("--resource", "licence=1") == ("licence", 1)
    for option, value, error in [("--gpus", "-1", "at least 0"), ("--mem", "12Q", "bad size"),
                                 ("--resource", "=3", "resource name"), ("--cpus", "0", "at least 1"),
                                 ("--resource", "licence", "NAME=COUNT"), ("--cpus", "x", "whole number")]:
        with pytest.raises(r.ResourceError, match=error):
            r.parse_request_option(option, value)
    assert r.normalise({}) is r.DEFAULT_REQUEST
    assert r.normalise({"gpus": 1}) == (("cpus", 1), ("gpus", 1))
    assert r.normalise({"gpus": 1}) is r.normalise({"gpus": 1})  # shared: a queued job costs a pointer
    assert r.normalise({"cpus": 4, "gpus": 0}) == (("cpus", 4),)
    assert r.request_problem({"cpus": 0}) == "a job asks for at least 1 CPU"
    assert "resource name" in r.request_problem({"": 1})
    assert r.describe(r.normalise({"gpus": 2, "mem": 16 * G})) == "gpus=2 mem=16G"


def test_allocation_env() -> None:
    env = r.allocation_env((("cpus", 2, ()), ("gpus", 2, ("1", "3")), ("fpga", 1, ("b",)), ("licence", 1, ())))
    assert env["CUDA_VISIBLE_DEVICES"] == env["JOBQUEUE_GPUS"] == "1,3"
    assert env["JOBQUEUE_CPUS"] == "2"
    assert env["JOBQUEUE_RESOURCE_FPGA"] == "b" and env["JOBQUEUE_RESOURCE_LICENCE"] == "1"
    assert b"CUDA_VISIBLE_DEVICES" not in r.job_env((("cpus", 1, ()),), {})  # a worker without GPUs: untouched
    assert r.job_env((("cpus", 1, ()),), {}, has_gpus=True)[b"CUDA_VISIBLE_DEVICES"] == b""  # with: none of them
    assert r.job_env((("cpus", 1, ()),), {}, asked=False) == {}  # a job that asked nothing: jq's environment
    assert r.job_env((("cpus", 1, ()),), {}, asked=False, has_gpus=True) == {b"CUDA_VISIBLE_DEVICES": b""}
    assert r.job_env((("cpus", 2, ()),), {b"OMP_NUM_THREADS": b"3"}) == {b"JOBQUEUE_CPUS": b"2",
                                                                        b"JOBQUEUE_RESOURCE_CPUS": b"2"}


# --- fitting ----------------------------------------------------------------------------------


def _box() -> r.Holdings:
    pools = r.worker_pools(8, 32 * G, r.Pool("gpus", 0, ("0", "1", "2", "3")), [r.Pool("licence", 1)])
    return r.Holdings(pools, slots=8)


def test_fitting_takes_distinct_items_and_release_gives_them_back() -> None:
    box = _box()
    one = r.normalise({"gpus": 1})
    grants = [box.take(f"j{i}", one) for i in range(4)]
    assert [g[1][2] for g in grants] == [("0",), ("1",), ("2",), ("3",)]
    assert not box.fits(one) and box.fits(r.DEFAULT_REQUEST)
    box.release("j2")
    assert box.take("j4", one)[1][2] == ("2",)
    box.release("j0")
    box.release("j1")
    assert box.take("j5", r.normalise({"gpus": 2}))[1][2] == ("0", "1")  # lowest free items first
    assert box.usage()[:3] == [("cpus", 3, 8), ("mem", 0, 32 * G), ("gpus", 4, 4)]


def test_fitting_needs_everything_at_once_and_a_slot() -> None:
    box = _box()
    box.take("big", r.normalise({"cpus": 6, "mem": 30 * G}))
    assert not box.fits(r.normalise({"cpus": 2, "mem": 4 * G}))  # CPUs would do, memory not
    assert box.fits(r.normalise({"cpus": 2, "licence": 1}))
    assert not box.fits(r.normalise({"cpus": 3}))
    assert not box.could_ever(r.normalise({"gpus": 5})) and box.could_ever(r.normalise({"gpus": 4}))
    slots = r.Holdings(r.worker_pools(16, G, None, []), slots=2)
    slots.take("a", r.DEFAULT_REQUEST)
    slots.take("b", r.DEFAULT_REQUEST)
    assert not slots.fits(r.DEFAULT_REQUEST) and not slots.has_room()  # -j 2 caps the jobs, not the CPUs


def test_why_it_waits() -> None:
    boxes = [r.Holdings(r.worker_pools(4, G, r.Pool("gpus", 0, ("0", "1")), []), 4) for _ in range(2)]
    for i, box in enumerate(boxes):
        box.take(f"j{i}", r.normalise({"gpus": 1}))
    assert r.why_waiting(r.normalise({"gpus": 2}), boxes) == \
        "needs gpus=2: no worker has 2 free (2 workers have 4 in total)"
    assert r.why_waiting(r.normalise({"licence": 1}), boxes) == "no connected worker has resource licence"
    assert r.why_waiting(r.normalise({"gpus": 8}), boxes) == \
        "needs gpus=8: no connected worker has that much (the most is 2)"
    assert r.why_waiting(r.normalise({"mem": 2 * G}), boxes).startswith("needs mem=2G")
    assert r.why_waiting(r.normalise({"gpus": 1}), boxes) == ""
    assert r.never_fits(r.normalise({"gpus": 2}), boxes) == ""


# --- the broker's matching ---------------------------------------------------------------------


def _worker(h: Harness, peer: bytes, resources: list[p.ResourcePool], slots: int = 8,
            jobs: list[p.ActiveJob] | None = None) -> None:
    h.send(peer, p.WorkerHello(p.PROTOCOL_VERSION, peer.decode(), peer.decode(), "h", 1, "0", slots, [],
                               jobs or [], resources=resources))


def _gpus(n: int) -> p.ResourcePool:
    return p.ResourcePool("gpus", n, [str(i) for i in range(n)])


def _assigns(h: Harness) -> list[Any]:
    return [m for _, m in h.outbox if isinstance(m, p.Assign)]


def test_one_gpu_per_job_on_a_four_gpu_box() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"w", [p.ResourcePool("cpus", 8), _gpus(4)])
    for i in range(8):
        h.submit(b"c", f"j{i}", resources={"gpus": 1})
    first = _assigns(h)
    assert [a.job_id for a in first] == ["j0", "j1", "j2", "j3"]
    assert sorted(g.items[0] for a in first for g in a.allocation if g.name == "gpus") == ["0", "1", "2", "3"]
    h.send(b"w", p.Finished("j2", 1, 0, "exited"))
    fifth = _assigns(h)[-1]
    assert fifth.job_id == "j4" and [g.items for g in fifth.allocation if g.name == "gpus"] == [["2"]]


def test_a_job_without_requests_asks_for_one_cpu() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"w", [p.ResourcePool("cpus", 3)], slots=8)
    for i in range(5):
        h.submit(b"c", f"j{i}")
    assert len(_assigns(h)) == 3
    assert _assigns(h)[0].allocation == [p.Grant("cpus", 1, [])]


def test_mixed_cpus_never_exceed_the_workers() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"w", [p.ResourcePool("cpus", 8)])
    h.submit(b"c", "big", resources={"cpus": 6})
    h.submit(b"c", "four", resources={"cpus": 4})
    h.submit(b"c", "two", resources={"cpus": 2})
    assert [a.job_id for a in _assigns(h)] == ["big", "two"]  # "two" overtakes "four", which does not fit
    h.send(b"w", p.Finished("big", 1, 0, "exited"))
    assert [a.job_id for a in _assigns(h)][-1] == "four"


def test_a_large_job_is_not_overtaken_forever() -> None:
    h = Harness()
    h.broker.scheduler.reserve_after = 10.0
    h.client(b"c")
    _worker(h, b"w", [p.ResourcePool("cpus", 8), _gpus(2)])
    h.submit(b"c", "s0", resources={"gpus": 1})
    h.submit(b"c", "big", resources={"gpus": 2})
    h.submit(b"c", "s1", resources={"gpus": 1})
    assert [a.job_id for a in _assigns(h)] == ["s0", "s1"]  # overtaking is fine at first
    for i in range(2, 6):  # a stream of small jobs: each ending one lets the next in...
        h.submit(b"c", f"s{i}", resources={"gpus": 1})
        h.now += 3
        h.send(b"w", p.Finished(_assigns(h)[-2].job_id, 1, 0, "exited"))
    started = [a.job_id for a in _assigns(h)]
    assert "big" not in started
    status = h.send(b"x", p.StatusRequest(p.PROTOCOL_VERSION))[0][1]
    why = {j.job_id: j.why for j in status.jobs}
    assert "worker w is held for it" in why["big"], why
    running = [j for j in started if h.state(j) is JobState.RUNNING]
    for job_id in running:  # ...until it waited 10s: then the worker drains for it
        h.send(b"w", p.Finished(job_id, 1, 0, "exited"))
    assert _assigns(h)[-1].job_id == "big"
    assert sorted(_assigns(h)[-1].allocation[1].items) == ["0", "1"]


def test_higher_priority_still_goes_first() -> None:
    h = Harness()
    h.client(b"c")
    h.submit(b"c", "low", resources={"gpus": 1})
    h.submit(b"c", "high", priority=5, resources={"gpus": 1})
    _worker(h, b"w", [_gpus(1)])
    assert [a.job_id for a in _assigns(h)] == ["high"]


def test_a_request_no_worker_can_ever_meet_waits_and_says_so() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"w", [_gpus(4)])
    h.submit(b"c", "huge", resources={"gpus": 64})
    queued = h.to(b"c", p.Queued)[-1]
    assert queued.why == "needs gpus=64: no connected worker has that much (the most is 4)"
    h.submit(b"c", "lic", resources={"licence": 1})
    assert h.to(b"c", p.Queued)[-1].why == "no connected worker has resource licence"
    _worker(h, b"big", [_gpus(64)])
    assert [a.job_id for a in _assigns(h)] == ["huge"]


def test_status_shows_used_and_total() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"w", [p.ResourcePool("cpus", 4), p.ResourcePool("mem", 8 * G), _gpus(2)])
    h.submit(b"c", "j", resources={"gpus": 1, "mem": 2 * G})
    status = h.send(b"x", p.StatusRequest(p.PROTOCOL_VERSION))[0][1]
    use = {u.name: (u.used, u.total) for u in status.workers[0].resources}
    assert use == {"cpus": (1, 4), "mem": (2 * G, 8 * G), "gpus": (1, 2)}
    assert status.jobs[0].resources == {"cpus": 1, "gpus": 1, "mem": 2 * G}


def test_requeue_returns_what_a_lost_job_held() -> None:
    h = Harness()
    h.client(b"c")
    _worker(h, b"a", [_gpus(2)])
    h.submit(b"c", "j", resources={"gpus": 2})
    h.submit(b"c", "k", resources={"gpus": 1})
    assert [a.job_id for a in _assigns(h)] == ["j"]
    h.send(b"a", p.Reject("j", 1, "busy"))  # the worker gives it back: it holds nothing there any more
    assert h.broker.peers[b"a"].holdings.free["gpus"] == 0  # ...and it runs again at once (it is first)
    assert [a.job_id for a in _assigns(h)] == ["j", "j"]
    h.send(b"a", p.Goodbye("SIGTERM"))  # the worker leaves: the job goes back to the queue
    assert h.state("j") is JobState.REQUEUED
    _worker(h, b"b", [_gpus(2)])
    assert [(a.job_id, a.allocation[1].items) for a in _assigns(h)][-1] == ("j", ["0", "1"])


def test_a_restarted_server_counts_what_running_jobs_hold() -> None:
    h = Harness()
    held = p.ActiveJob("old", 1, [b"sleep"], [], allocation=[p.Grant("cpus", 1), p.Grant("gpus", 1, ["1"])])
    _worker(h, b"w", [_gpus(2)], jobs=[held])
    h.client(b"c")
    h.submit(b"c", "new", resources={"gpus": 1})
    assert [g.items for g in _assigns(h)[-1].allocation if g.name == "gpus"] == [["0"]]


def test_bad_requests_are_refused() -> None:
    h = Harness()
    h.client(b"c")
    for resources in ({"cpus": 0}, {"gpus": -1}, {"": 3}, {"a b": 1}):
        h.submit(b"c", "bad", resources=resources)
    assert len(h.to(b"c", p.Error)) == 4 and h.broker.jobs == {}


# --- the property test --------------------------------------------------------------------------

WORKERS = st.lists(st.tuples(st.integers(1, 8), st.integers(0, 4), st.integers(0, 2), st.integers(1, 8)),
                   min_size=1, max_size=4)
REQUESTS = st.fixed_dictionaries({}, optional={"cpus": st.integers(1, 8), "gpus": st.integers(0, 4),
                                               "licence": st.integers(0, 2)})
EVENTS = st.lists(st.one_of(st.tuples(st.just("submit"), REQUESTS, st.integers(0, 2)),
                            st.tuples(st.just("finish"), st.integers(0, 100), st.just(0)),
                            st.tuples(st.just("leave"), st.integers(0, 3), st.just(0)),
                            st.tuples(st.just("wait"), st.integers(1, 20), st.just(0))), max_size=60)


class Model:
    """The property test's view of the cluster, from the messages alone."""

    def __init__(self, h: Harness, workers: list[tuple[int, int, int, int]]) -> None:
        self.h = h
        self.pools: dict[bytes, dict[str, int]] = {}
        self.held: dict[bytes, dict[str, list[p.Grant]]] = {}
        self.seen = 0
        for i, (cpus, gpus, licence, slots) in enumerate(workers):
            self.join(f"w{i}".encode(), cpus, gpus, licence, slots)

    def join(self, peer: bytes, cpus: int, gpus: int, licence: int, slots: int) -> None:
        pools = [p.ResourcePool("cpus", cpus), _gpus(gpus), p.ResourcePool("licence", licence)]
        self.pools[peer] = {"cpus": cpus, "gpus": gpus, "licence": licence, "slots": slots}
        self.held[peer] = {}
        _worker(self.h, peer, pools, slots=slots)
        self.check()

    def check(self) -> None:
        """Read the new Assigns, then: nothing over-committed, no item held twice."""
        for peer, message in self.h.outbox[self.seen:]:
            if isinstance(message, p.Assign):
                assert message.job_id not in self.held[peer]
                self.held[peer][message.job_id] = message.allocation
        self.seen = len(self.h.outbox)
        for peer, jobs in self.held.items():
            used: Counter[str] = Counter()
            items: Counter[str] = Counter()
            for grants in jobs.values():
                for g in grants:
                    used[g.name] += g.amount
                    items.update(f"{g.name}:{i}" for i in g.items)
            limits = self.pools[peer]
            assert all(used[name] <= limits[name] for name in used), (used, limits)
            assert len(jobs) <= limits["slots"]
            assert all(n == 1 for n in items.values()), items
            assert all(int(i.split(":")[1]) < limits["gpus"] for i in items if i.startswith("gpus:"))

    def finish(self, n: int) -> None:
        running = [(peer, job) for peer, jobs in self.held.items() for job in jobs]
        if running:
            peer, job = running[n % len(running)]
            del self.held[peer][job]
            self.h.send(peer, p.Finished(job, self.h.broker.jobs[job].attempt, 0, "exited"))
            self.check()

    def leave(self, n: int) -> None:
        if len(self.held) > 1:
            peer = sorted(self.held)[n % len(self.held)]
            del self.held[peer], self.pools[peer]
            self.h.send(peer, p.Goodbye("test"))
            self.check()


@settings(max_examples=150, deadline=None)
@given(WORKERS, EVENTS)
def test_property_nothing_over_committed_and_every_fitting_job_runs(
        workers: list[tuple[int, int, int, int]], events: list[tuple[str, Any, int]]) -> None:
    h = Harness()
    h.broker.scheduler.reserve_after = 5.0
    h.client(b"c")
    model = Model(h, workers)
    submitted = 0
    for kind, value, priority in events:
        if kind == "submit":
            h.submit(b"c", f"j{submitted}", priority=priority, resources=value)
            submitted += 1
            model.check()
        elif kind == "finish":
            model.finish(value)
        elif kind == "leave":
            model.leave(value)
        else:
            h.now += value
            for peer in model.held:
                h.send(peer, p.Ping())
            h.send(b"c", p.Ping())
    # Then only endings: every job that fits a connected worker must run and end.
    for _ in range(10 * submitted + 10):
        h.now += 1
        if not any(model.held.values()):
            break
        model.finish(0)
    for job in h.broker.jobs.values():
        fits = [w for w in h.broker.peers.values() if hasattr(w, "holdings") and w.holdings.could_ever(job.request)]
        assert job.state is JobState.FINISHED or not fits, (job.job_id, job.state, job.request)


# --- the system side and autoscaling ------------------------------------------------------------


def test_enforce_mem_is_refused_clearly_without_a_usable_cgroup(tmp_path: Any) -> None:
    from jobqueue.confine import ConfineError, MemoryCgroups

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/\n")
    (proc / "mountinfo").write_text("")
    with pytest.raises(ConfineError, match="--enforce-mem needs a memory cgroup .*no cgroup file system"):
        MemoryCgroups.setup(proc)
    fs = tmp_path / "cg"
    fs.mkdir()
    (fs / "cgroup.controllers").write_text("cpu io\n")
    (proc / "mountinfo").write_text(f"30 20 0:26 / {fs} rw - cgroup2 cgroup2 rw\n")
    with pytest.raises(ConfineError, match="memory controller is not delegated"):
        MemoryCgroups.setup(proc)
    (fs / "cgroup.controllers").write_text("cpu memory\n")
    (fs / "cgroup.subtree_control").write_text("")
    (fs / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    with pytest.raises(ConfineError, match="holds other processes too; run the worker in a cgroup of its own"):
        MemoryCgroups.setup(proc)


def test_bind_cpus_needs_enough_cpus_and_hands_out_distinct_ones() -> None:
    from jobqueue.confine import ConfineError, CpuPinning

    with pytest.raises(ConfineError, match="--cpus 8 is more than the 2 CPUs"):
        CpuPinning({0, 1}, 8)
    pins = CpuPinning({0, 1, 2, 3}, 4)
    assert pins.take("a", 2) == [0, 1] and pins.take("b", 1) == [2]
    pins.release("a")
    assert pins.take("c", 3) == [0, 1, 3]


def test_spawn_only_for_jobs_that_fit_the_spawn_resources() -> None:
    from jobqueue.autoscale import Autoscaler, SpawnPolicy

    plain = SpawnPolicy("true")
    assert plain.fits(r.DEFAULT_REQUEST) and not plain.fits(r.normalise({"gpus": 1}))
    gpu = SpawnPolicy("true", resources=(r.Pool("cpus", 8), r.parse_gpus("4", lambda: ())))
    assert gpu.fits(r.normalise({"gpus": 4, "cpus": 8})) and not gpu.fits(r.normalise({"gpus": 5}))
    why = Autoscaler(gpu).why_waiting([], 0.0, r.normalise({"gpus": 5}))
    assert why == "not autoscaled: it needs gpus=5, more than --spawn-resources gives"


def test_worker_core_tells_the_job_what_it_got_and_reports_an_out_of_memory_end() -> None:
    from jobqueue.worker import actions as a
    from jobqueue.worker.core import WorkerCore

    pools = [p.ResourcePool("cpus", 4), p.ResourcePool("mem", 8 * G), _gpus(4)]
    core = WorkerCore(a.CoreConfig(name="w", host="h", slots=4, resources=pools), 0.0)
    grants = [p.Grant("cpus", 2), p.Grant("gpus", 2, ["1", "3"]), p.Grant("mem", 64 << 20)]
    spec = p.JobSpec([b"python3"], {b"OMP_NUM_THREADS": b"9"}, b"/", resources={"cpus": 2, "gpus": 2, "mem": 64 << 20})
    spawn = [x for x in core.on_message(p.Assign("j", 1, spec, grants), 0.0) if isinstance(x, a.Spawn)][0]
    assert spawn.allocation == grants
    env = spawn.spec.env
    assert (env[b"CUDA_VISIBLE_DEVICES"], env[b"JOBQUEUE_GPUS"], env[b"JOBQUEUE_CPUS"]) == (b"1,3", b"1,3", b"2")
    assert env[b"OMP_NUM_THREADS"] == b"9" and env[b"JOBQUEUE_MEM"] == str(64 << 20).encode()
    hello = core.hello()
    assert hello.resources == pools and hello.jobs[0].allocation == grants
    core.on_spawned("j", 100, 0.0)
    core.on_eof("j", p.STDOUT, 0.0)
    core.on_eof("j", p.STDERR, 0.0)
    out = core.on_exit("j", int(signal.SIGKILL), 1.0, out_of_memory=64 << 20)
    end = [x.message for x in out if isinstance(x, a.Send) and isinstance(x.message, p.Finished)][0]
    assert (end.status, end.reason, end.message) == (137, "out-of-memory",
                                                      "job j exceeded its memory (64M) and was killed")


def test_policy_hooks_partition_admission_and_rank() -> None:
    """What a policy (per-owner limits, fair share) plugs into the matching."""
    h = Harness()
    sched = h.broker.scheduler
    sched.partition = lambda job: job.job_id[0]  # owner "a" or "b", from the id here
    blocked = {"a"}
    sched.may_start = lambda job: job.job_id[0] not in blocked
    sched.rank = lambda job, entry: (entry[0], job.job_id[0] != "b", entry[1])  # b first within a priority
    h.client(b"c")
    for job_id in ("a1", "a2", "b1", "b2"):
        h.submit(b"c", job_id)
    _worker(h, b"w", [p.ResourcePool("cpus", 2)], slots=2)
    assert [a.job_id for a in _assigns(h)] == ["b1", "b2"]
    blocked.clear()
    h.send(b"w", p.Finished("b1", 1, 0, "exited"))
    assert [a.job_id for a in _assigns(h)][-1] == "a1"


@pytest.mark.parametrize("args, cpus, slots", [
    ([], 1, 1), (["-j", "3"], 3, 3), (["--cpus", "4"], 4, 4), (["--cpus", "4", "-j", "2"], 4, 2),
    (["--resource", "cpus=16", "--resource", "mem=64G"], 16, 16), (["--gpus", "2"], os.cpu_count(), os.cpu_count()),
])
def test_worker_options_give_its_cpus_and_slots(args: list[str], cpus: int, slots: int) -> None:
    from jobqueue.cli.worker import _worker_parser, _worker_resources

    pools, got_slots = _worker_resources(_worker_parser().parse_args(args))
    assert (pools[0], got_slots) == (r.Pool("cpus", cpus), slots)
    assert pools[1].name == "mem" and pools[1].total > 0


def test_an_owner_below_its_max_running_again_starts_on_any_worker_it_fits() -> None:
    from jobqueue.tenancy import Limits, Policy, Tenancy

    h = Harness()
    h.broker.tenancy = Tenancy(Policy(clients={"alice": Limits(max_running=1)}))
    h.broker._tenancy_hooks()
    h.send(b"c", p.ClientHello(p.PROTOCOL_VERSION, "c", "c"), None)
    h.broker.peers[b"c"].owner = "alice"
    _worker(h, b"cpu", [p.ResourcePool("cpus", 1)], slots=1)
    _worker(h, b"gpu", [p.ResourcePool("cpus", 1), _gpus(1)], slots=1)
    h.submit(b"c", "first")
    h.submit(b"c", "second", resources={"gpus": 1})
    assert [(peer, job) for peer, job, _ in h.assigned(h.outbox)] == [(b"cpu", "first")]  # max-running 1
    h.send(b"cpu", p.Finished("first", 1, 0, "exited"))  # frees a worker "second" cannot use...
    assert [(peer, job) for peer, job, _ in h.assigned(h.outbox)][-1] == (b"gpu", "second")  # ...yet it starts
