"""Keep N jobs queued on a server: submit them (with a tag no worker has) through one
jobqueue.Executor and hold the connection until killed.

usage: queue_holder.py ADDRESS N TAG
"""

from __future__ import annotations

import signal
import sys

from jobqueue import Executor


def main() -> None:
    address, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    executor = Executor(server=address, tags=[tag])
    for _ in range(count):
        executor.submit(["true"])
    print(f"submitted {count}", flush=True)
    signal.pause()  # SIGTERM ends us; the server then drops the jobs


if __name__ == "__main__":
    main()
