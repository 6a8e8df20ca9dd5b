"""The sans-IO Broker alone, driven in this process by synthetic workers and a
client that answer at once (no sockets, no fork): what it costs per job.

usage:
  broker_capacity.py jobs --workers W --jobs J [--owners N] [--fair-share] [--mixed] [--profile]
      J jobs submitted while W one-slot workers are connected; each worker
      answers an Assign with Started and Finished, the client a Finished with
      Release.  Times the submissions and the drain of the queue.  With
      --owners N the jobs come from N clients of N owners in turn (tenancy);
      --fair-share turns on the server's --fair-share among them.  --mixed:
      workers of 8 CPUs, 32G, 4 GPUs and licence=2 (8 jobs at once), jobs
      asking for a mix of CPUs, memory, GPUs and licences (MIXED_REQUESTS).
  broker_capacity.py chunks --messages M [--size BYTES] [--profile]
      One running job: M small Output frames worker -> client, each
      acknowledged by the client (Ack client -> worker).
  broker_capacity.py memory --jobs J [--env minimal|full]
      Python heap bytes per queued job (tracemalloc), and where they go.

Prints one JSON object.  Every incoming frame is encoded before the clock
starts (it is the peers' work); encoding what the broker sends is counted, as
the server does it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import linecache
import os
import pstats
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any

from jobqueue import protocol as p
from jobqueue.broker import Broker, Send
from jobqueue.tenancy import Policy, Tenancy

NOW = 1.0
CLIENT = b"client"


def worker_id(i: int) -> bytes:
    return b"w%d" % i


def tag_of(message: Any) -> str:
    """The tag of a message the broker sends: a struct, or a relayed frame."""
    if isinstance(message, p.Message):
        return str(type(message).__struct_config__.tag)
    head = bytes(message[:24])  # fixarray, then the tag as a fixstr
    return head[2:2 + (head[1] & 0x1F)].decode()


#: The requests of --mixed, in turn (mem in bytes).
MIXED_REQUESTS: list[dict[str, int]] = [
    {}, {"cpus": 2}, {"gpus": 1}, {"cpus": 1, "mem": 4 << 30}, {"gpus": 2, "cpus": 4, "mem": 16 << 30},
    {"licence": 1}, {"cpus": 4}, {"gpus": 1, "mem": 8 << 30},
]
MIXED_WORKER = [p.ResourcePool("cpus", 8), p.ResourcePool("mem", 32 << 30),
                p.ResourcePool("gpus", 4, ["0", "1", "2", "3"]), p.ResourcePool("licence", 2)]


def new_broker(workers: int, fair_share: bool = False, mixed: bool = False) -> Broker:
    broker = Broker(0.0, restart_hold=0.0, tenancy=Tenancy(Policy(fair_share=fair_share)))
    for i in range(workers):
        hello = p.WorkerHello(p.PROTOCOL_VERSION, f"ws{i}", f"w{i}", "bench", 1, "bench", slots=8 if mixed else 1,
                              resources=MIXED_WORKER if mixed else [])
        broker.receive(worker_id(i), p.encode(hello), NOW)
    broker.receive(CLIENT, p.encode(p.ClientHello(p.PROTOCOL_VERSION, "cs", "bench")), NOW)
    broker.events.clear()
    return broker


def job_spec(env: str) -> p.JobSpec:
    return p.JobSpec(argv=[b"true"], env=dict(os.environb) if env == "full" else {}, cwd=b"/tmp")


class JobDriver:
    """Peers that answer at once: Started+Finished for an Assign, Release for a Finished."""

    def __init__(self, broker: Broker, jobs: int, mixed: bool = False) -> None:
        self.broker = broker
        self.ids = [f"j{i}" for i in range(jobs)]
        specs = [job_spec("minimal")]
        if mixed:
            specs = [p.JobSpec(argv=[b"true"], env={}, cwd=b"/tmp", resources=r) for r in MIXED_REQUESTS]
        self.submits = [p.encode(p.Submit(j, specs[i % len(specs)])) for i, j in enumerate(self.ids)]
        self.replies = {j: (p.encode(p.Started(j, 1, pid=1)), p.encode(p.Finished(j, 1, 0, "exited")))
                        for j in self.ids}
        self.releases = {j: p.encode(p.Release(j, 1)) for j in self.ids}
        self.pending: deque[tuple[bytes, bytes]] = deque()
        #: The client peers (and their owners): OwnersDriver has several.
        self.clients: dict[bytes, str] = {CLIENT: ""}
        self.finished = 0
        self.messages_in = 0
        self.messages_out = 0

    def submit_all(self) -> None:
        for frame in self.submits:
            self.deliver(self.broker.receive(CLIENT, frame, NOW))

    def drain(self) -> None:
        pending, receive, deliver = self.pending, self.broker.receive, self.deliver
        while pending:
            peer, frame = pending.popleft()
            deliver(receive(peer, frame, NOW))

    def deliver(self, sends: list[Send]) -> None:
        self.messages_in += 1
        for send in sends:
            message = send.message
            if isinstance(message, p.Message):
                p.encode(message)
            self.messages_out += 1
            tag = tag_of(message)
            if tag == "assign":
                started, finished = self.replies[_job_id(message, p.decode_to_worker)]
                self.pending.append((send.peer, started))
                self.pending.append((send.peer, finished))
            elif tag == "finished" and send.peer in self.clients:
                self.finished += 1
                self.pending.append((send.peer, self.releases[_job_id(message, p.decode_to_client)]))


def _job_id(message: Any, decode: Callable[[bytes], p.Message]) -> str:
    msg = message if isinstance(message, p.Message) else decode(bytes(message))
    return str(msg.job_id)  # type: ignore[attr-defined]


class OwnersDriver(JobDriver):
    """The same, with the jobs submitted by N clients of N owners in turn."""

    def __init__(self, broker: Broker, jobs: int, owners: int) -> None:
        super().__init__(broker, jobs)
        self.clients = {b"client%d" % i: f"owner{i}" for i in range(owners)}
        for peer, owner in self.clients.items():
            hello = p.ClientHello(p.PROTOCOL_VERSION, peer.decode(), "bench")
            broker.receive(peer, p.encode(hello), NOW, None, owner)
        broker.events.clear()
        peers = list(self.clients)
        self.client_of = {j: peers[i % owners] for i, j in enumerate(self.ids)}

    def submit_all(self) -> None:
        for job_id, frame in zip(self.ids, self.submits):
            peer = self.client_of[job_id]
            self.deliver(self.broker.receive(peer, frame, NOW, None, self.clients[peer]))

    def drain(self) -> None:
        pending, receive, deliver, clients = self.pending, self.broker.receive, self.deliver, self.clients
        while pending:
            peer, frame = pending.popleft()
            deliver(receive(peer, frame, NOW, None, clients.get(peer, "")))


def measure_jobs(workers: int, jobs: int, owners: int = 0, fair_share: bool = False,
                 mixed: bool = False) -> dict[str, Any]:
    broker = new_broker(workers, fair_share, mixed)
    driver = OwnersDriver(broker, jobs, owners) if owners else JobDriver(broker, jobs, mixed)
    start = time.perf_counter()
    driver.submit_all()
    submitted = time.perf_counter()
    driver.drain()
    end = time.perf_counter()
    if driver.finished != jobs:
        raise SystemExit(f"only {driver.finished} of {jobs} jobs finished: the driver or the broker is wrong")
    return {"workers": workers, "jobs": jobs, "owners": owners, "fair_share": fair_share, "mixed": mixed,
            "submit_seconds": submitted - start, "drain_seconds": end - submitted,
            "total_seconds": end - start, "messages_in": driver.messages_in, "messages_out": driver.messages_out}


def measure_chunks(messages: int, size: int) -> dict[str, Any]:
    broker = new_broker(1)
    driver = JobDriver(broker, 1)
    worker = worker_id(0)
    driver.submit_all()  # assigned at once; keep it running: send only Started
    broker.receive(worker, driver.replies["j0"][0], NOW)
    data = b"x" * size
    outputs = [p.encode(p.Output("j0", 1, p.STDOUT, i * size, data)) for i in range(messages)]
    acks = [p.encode(p.Ack("j0", 1, p.STDOUT, (i + 1) * size)) for i in range(messages)]
    relayed = 0
    start = time.perf_counter()
    for output, ack in zip(outputs, acks):
        for send in broker.receive(worker, output, NOW):
            relayed += send.peer == CLIENT
        for send in broker.receive(CLIENT, ack, NOW):
            if isinstance(send.message, p.Message):
                p.encode(send.message)
    seconds = time.perf_counter() - start
    if relayed != messages:
        raise SystemExit(f"only {relayed} of {messages} Output frames reached the client")
    return {"chunks": messages, "size": size, "seconds": seconds, "messages": 2 * messages}


def measure_memory(jobs: int, env: str) -> dict[str, Any]:
    broker = new_broker(0)
    spec = job_spec(env)
    frames = [p.encode(p.Submit(f"j{i}", spec)) for i in range(jobs)]
    tracemalloc.start(5)
    before = tracemalloc.take_snapshot()
    for frame in frames:
        broker.receive(CLIENT, frame, NOW)
        broker.events.clear()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    top = [_site(s.size_diff / jobs, s.traceback[0]) for s in stats[:8]]
    return {"jobs": jobs, "env": env, "spec_bytes": len(frames[0]), "bytes_per_job": total / jobs,
            "top": "\n".join(top)}


def _site(per_job: float, frame: tracemalloc.Frame) -> str:
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{per_job:8.1f} B/job  {frame.filename.split('/src/')[-1]}:{frame.lineno}  {code}"


def profiled(function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    profiler = cProfile.Profile()
    result = profiler.runcall(function)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    result["profile"] = "\n".join(line.replace(os.getcwd() + "/", "") for line in lines[start:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("jobs", "chunks", "memory"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--env", choices=("minimal", "full"), default="minimal")
    parser.add_argument("--owners", type=int, default=0)
    parser.add_argument("--fair-share", action="store_true")
    parser.add_argument("--mixed", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    work: Callable[[], dict[str, Any]]
    if args.mode == "jobs":
        def work() -> dict[str, Any]:
            return measure_jobs(args.workers, args.jobs, args.owners, args.fair_share, args.mixed)
    elif args.mode == "chunks":
        def work() -> dict[str, Any]:
            return measure_chunks(args.messages, args.size)
    else:
        def work() -> dict[str, Any]:
            return measure_memory(args.jobs, args.env)
    print(json.dumps(profiled(work) if args.profile else work()))


if __name__ == "__main__":
    main()
