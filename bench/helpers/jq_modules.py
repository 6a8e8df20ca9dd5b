"""Run one ``jq -s ADDRESS true`` in this process; print how many modules it
loaded and the top-level ones (what jq's start-up pays for)."""

from __future__ import annotations

import sys

from jobqueue.jq import main


def report() -> None:
    address = sys.argv[1]
    code = main(["-s", address, "true"])
    top = sorted(name for name in sys.modules if "." not in name and not name.startswith("_"))
    print(len(sys.modules), " ".join(top))
    sys.exit(code)


if __name__ == "__main__":
    report()
