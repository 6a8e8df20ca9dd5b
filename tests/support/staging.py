"""Helpers for staging tests: workers that share no file system with jq."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from jobqueue.staging import watchclient
from tests.conftest import BIN, Cluster, wait_for


def isolated_worker(cluster: Cluster, *args: str, name: str, wait: bool = True, endpoint: str | None = None,
                    hide: Path | None = None, program: Sequence[str] = (),
                    env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A worker that cannot see the test's directory (a tmpfs hides ``hide``, by default
    the whole test directory, in its own mount namespace); its cache lives on that tmpfs.
    ``program`` replaces ``jobqueue-worker`` (e.g. a wrapper that plays a hostile worker)."""
    script = 'mount -t tmpfs none "$1" && shift && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(hide or cluster.tmp),
               *(program or [str(BIN / "jobqueue-worker")]), endpoint or cluster.endpoint, "--name", name,
               "--kill-grace", "1", "--cache-dir", str((hide or cluster.tmp) / "worker-cache"), *args]
    proc = cluster.spawn(command, log=f"worker-{name}", **({"env": env} if env else {}))
    if wait:
        cluster.wait_worker(name)
    return proc


def sent(stderr: bytes) -> tuple[int, int]:
    """(blobs, bytes) that jq -v says it sent."""
    match = re.search(rb"sent (\d+) blobs \(([\d.]+) (bytes|KiB|MiB)\)", stderr)
    assert match, stderr
    scale = {b"bytes": 1, b"KiB": 1024, b"MiB": 1 << 20}[match[3]]
    return int(match[1]), int(float(match[2]) * scale)


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # (init here reaps it in its own time)
    except psutil.NoSuchProcess:
        return True


def stop_watcher(root: bytes) -> None:
    """Stop ``root``'s stage watcher, if any, and see it end (killed by pid if it does not)."""
    pid = watchclient.stop(root)
    if pid is None:
        return
    try:
        wait_for(lambda: _ended(pid), 10, f"the stage watcher {pid} to end when asked")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise
