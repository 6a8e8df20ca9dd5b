"""A hostile (or broken) worker for tests: the real ``jobqueue-worker``, whose
results are rewritten on their way to jq as the environment variable
``JOBQUEUE_TEST_HOSTILE`` (JSON) says:

- ``"rename": {PATH: NEW}``: report the result PATH as NEW (``../../x``, ``/abs``...);
- ``"retarget": {PATH: TARGET}``: report the symlink PATH as pointing to TARGET;
- ``"redirect": {PATH: OTHER}``: send PATH's bytes as if they were OTHER's.

Usage: ``python -m tests.support.hostile_worker ARGS...`` (those of jobqueue-worker).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import msgspec

from jobqueue import protocol as p
from jobqueue.cli import worker_main
from jobqueue.worker.shell import Worker


def _install(rules: dict[str, dict[str, str]]) -> None:
    rename = {os.fsencode(k): os.fsencode(v) for k, v in rules.get("rename", {}).items()}
    retarget = {os.fsencode(k): os.fsencode(v) for k, v in rules.get("retarget", {}).items()}
    redirect = {os.fsencode(k): os.fsencode(v) for k, v in rules.get("redirect", {}).items()}
    reported: dict[str, list[bytes]] = {}  # job -> the paths it reported, in index order (as they really are)
    honest_send = Worker._send

    def send(self: Worker, message: p.Message) -> None:
        if isinstance(message, p.Results):
            paths = reported.setdefault(message.job_id, [])
            entries = []
            for entry in message.entries:
                paths.append(entry.path)
                entry = msgspec.structs.replace(entry, path=rename.get(entry.path, entry.path))
                if entry.path in retarget:
                    entry = msgspec.structs.replace(entry, target=retarget[entry.path])
                entries.append(entry)
            message = msgspec.structs.replace(message, entries=entries)
        elif isinstance(message, p.ResultData):
            paths = reported.get(message.job_id, [])
            other = redirect.get(paths[message.index]) if message.index < len(paths) else None
            if other is not None and other in paths:
                message = msgspec.structs.replace(message, index=paths.index(other))
        honest_send(self, message)

    Worker._send = send


def main() -> Any:
    _install(json.loads(os.environ.get("JOBQUEUE_TEST_HOSTILE", "{}")))
    return worker_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
