"""Run N trivial tasks as one HyperQueue job on a LocalCluster with 2 cores;
print the seconds from submission to the end of the wait.

usage: hq_burst.py N WORKDIR   (run with an interpreter that has `hyperqueue`)
"""

from __future__ import annotations

import json
import os
import sys
import time

from hyperqueue import Job, LocalCluster
from hyperqueue.cluster import WorkerConfig


def main() -> None:
    jobs, workdir = int(sys.argv[1]), sys.argv[2]
    os.chdir(workdir)
    with LocalCluster(os.path.join(workdir, "hq-server"), WorkerConfig(cores=2)) as cluster:
        client = cluster.client()
        start = time.perf_counter()
        job = Job()
        for _ in range(jobs):
            job.program(["true"])
        submitted = client.submit(job)
        ok = client.wait_for_jobs([submitted], raise_on_error=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"jobs": jobs, "seconds": seconds, "failed": 0 if ok else -1}))


if __name__ == "__main__":
    main()
