"""Synthetic jobqueue peers in one process: ZeroMQ DEALER sockets speaking the
protocol to a real server, without forking anything.

usage:
  synthetic_peers.py workers ADDRESS N        connect N workers (WorkerHello), print
                                              {"ready": N} once all are welcomed, hold
                                              them until stdin closes
  synthetic_peers.py queue ADDRESS N [--env minimal|full]
                                              one client queues N jobs (no worker takes
                                              them), print {"ready": N}, hold until stdin closes
  synthetic_peers.py capacity ADDRESS --workers W --jobs J
                                              W one-slot workers answer each Assign at once
                                              (Started, Finished); the client submits J jobs
                                              and releases each end; print the seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import zmq

from jobqueue import protocol as p

TIMEOUT = 120.0


def dealer(context: zmq.Context, address: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    return sock


def new_context(sockets: int) -> zmq.Context:
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, sockets + 100)
    return context


def connect_workers(context: zmq.Context, address: str, count: int) -> list[zmq.Socket]:
    socks = []
    for i in range(count):
        sock = dealer(context, address)
        hello = p.WorkerHello(p.PROTOCOL_VERSION, f"bench-{os.getpid()}-{i}", f"synthetic-{i}", "bench",
                              os.getpid(), "bench", slots=1)
        sock.send(p.encode(hello))
        socks.append(sock)
    for sock in socks:
        expect(sock, p.decode_to_worker, p.Welcome)
    return socks


def connect_client(context: zmq.Context, address: str) -> zmq.Socket:
    sock = dealer(context, address)
    sock.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, f"bench-client-{os.getpid()}", "bench")))
    expect(sock, p.decode_to_client, p.Welcome)
    return sock


def expect(sock: zmq.Socket, decode: Any, kind: type) -> Any:
    if not sock.poll(TIMEOUT * 1000):
        raise SystemExit(f"no {kind.__name__} from the server within {TIMEOUT:g}s")
    msg = decode(sock.recv())
    if not isinstance(msg, kind):
        raise SystemExit(f"expected {kind.__name__}, got {msg!r}")
    return msg


def spec(env: str) -> p.JobSpec:
    return p.JobSpec(argv=[b"true"], env=dict(os.environb) if env == "full" else {}, cwd=b"/tmp")


def hold(ready: dict[str, Any]) -> None:
    print(json.dumps(ready), flush=True)
    sys.stdin.read()


def queue_jobs(context: zmq.Context, address: str, jobs: int, env: str) -> dict[str, Any]:
    client = connect_client(context, address)
    job_spec = spec(env)
    for i in range(jobs):
        client.send(p.encode(p.Submit(f"q{os.getpid()}-{i}", job_spec)))
    queued = 0
    deadline = time.monotonic() + TIMEOUT
    while queued < jobs and time.monotonic() < deadline:
        if client.poll(1000):
            queued += isinstance(p.decode_to_client(client.recv()), p.Queued)
    if queued < jobs:
        raise SystemExit(f"only {queued} of {jobs} jobs were queued")
    return {"ready": jobs, "spec_bytes": len(p.encode(p.Submit("q0", job_spec))), "client": client}


def capacity(context: zmq.Context, address: str, workers: int, jobs: int) -> dict[str, Any]:
    socks = connect_workers(context, address, workers)
    client = connect_client(context, address)
    poller = zmq.Poller()
    for sock in [client, *socks]:
        poller.register(sock, zmq.POLLIN)
    job_spec = spec("minimal")
    start = time.perf_counter()
    for i in range(jobs):
        client.send(p.encode(p.Submit(f"c{os.getpid()}-{i}", job_spec)))
    finished = 0
    deadline = time.monotonic() + TIMEOUT
    while finished < jobs:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {finished} of {jobs} jobs finished within {TIMEOUT:g}s")
        for sock, _ in poller.poll(1000):
            finished += drain(sock, client)
    seconds = time.perf_counter() - start
    leave(client, socks)
    return {"workers": workers, "jobs": jobs, "seconds": seconds}


def leave(client: zmq.Socket | None, workers: list[zmq.Socket]) -> None:
    """Say goodbye, so that the server does not keep our peers until their liveness runs out."""
    for sock in workers:
        sock.send(p.encode(p.Goodbye("benchmark done")))
    if client is not None:
        client.send(p.encode(p.Bye()))
    for sock in [*workers, *([client] if client is not None else [])]:
        sock.close(linger=2000)


def drain(sock: zmq.Socket, client: zmq.Socket) -> int:
    """Answer every waiting message on ``sock``; the number of jobs that ended."""
    ended = 0
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return ended
        if sock is client:
            msg = p.decode_to_client(frame)
            if isinstance(msg, p.Finished):
                ended += 1
                client.send(p.encode(p.Release(msg.job_id, msg.attempt)))
        else:
            msg = p.decode_to_worker(frame)
            if isinstance(msg, p.Assign):
                sock.send(p.encode(p.Started(msg.job_id, msg.attempt, pid=1)))
                sock.send(p.encode(p.Finished(msg.job_id, msg.attempt, 0, "exited")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("workers", "queue", "capacity"))
    parser.add_argument("address")
    parser.add_argument("count", type=int, nargs="?", default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--env", choices=("minimal", "full"), default="minimal")
    args = parser.parse_args()
    if args.mode == "workers":
        context = new_context(args.count)
        socks = connect_workers(context, args.address, args.count)
        hold({"ready": args.count})
        leave(None, socks)
    elif args.mode == "queue":
        context = new_context(1)
        ready = queue_jobs(context, args.address, args.count, args.env)
        client = ready.pop("client")
        hold(ready)
        leave(client, [])
    else:
        context = new_context(args.workers + 1)
        print(json.dumps(capacity(context, args.address, args.workers, args.jobs)))
    context.term()


if __name__ == "__main__":
    main()
