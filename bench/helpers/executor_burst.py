"""Run N trivial jobs through one jobqueue.Executor; print the seconds they took.

usage: executor_burst.py ADDRESS N [--for SECONDS]

One warm-up job first (the connection and the worker's first fork are not
part of the burst).  With --for, bursts repeat until that many seconds have
passed (for a profiler); the last burst is reported.
"""

from __future__ import annotations

import argparse
import json
import time

from jobqueue import Executor


def burst(executor: Executor, jobs: int) -> tuple[float, int]:
    start = time.perf_counter()
    futures = [executor.submit(["true"]) for _ in range(jobs)]
    failed = sum(f.result().returncode != 0 for f in futures)
    return time.perf_counter() - start, failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("jobs", type=int)
    parser.add_argument("--for", dest="duration", type=float, default=0.0)
    args = parser.parse_args()
    with Executor(server=args.address) as executor:
        executor.submit(["true"]).result()
        deadline = time.monotonic() + args.duration
        seconds, failed = burst(executor, args.jobs)
        while time.monotonic() < deadline:
            seconds, failed = burst(executor, args.jobs)
    print(json.dumps({"jobs": args.jobs, "seconds": seconds, "failed": failed}))


if __name__ == "__main__":
    main()
