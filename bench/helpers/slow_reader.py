"""A slow reader: read stdin at most RATE bytes per second; print the bytes read.

usage: slow_reader.py RATE
"""

from __future__ import annotations

import os
import sys
import time

CHUNK = 64 * 1024


def main() -> None:
    rate = int(sys.argv[1])
    start = time.monotonic()
    total = 0
    while True:
        data = os.read(0, CHUNK)
        if not data:
            break
        total += len(data)
        ahead = total / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(total)


if __name__ == "__main__":
    main()
