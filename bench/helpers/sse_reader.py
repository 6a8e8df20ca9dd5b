"""A browser tab's share of a dashboard: read one server-sent event stream and throw it away.

usage: sse_reader.py URL
"""

from __future__ import annotations

import sys
import urllib.request


def main() -> None:
    with urllib.request.urlopen(sys.argv[1], timeout=60) as stream:
        while stream.read1(65536):
            pass


if __name__ == "__main__":
    main()
