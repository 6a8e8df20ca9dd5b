"""Which processes still hold a directory (a shell: reads /proc).

A staged job's process group is killed when the job ends, but a process that
left it (``setsid``, a daemon the job started: a compiler server, a test
database) may still work in the job's directory and change it after its
results were taken.  Before a finished job's directory is brought back to its
snapshot and kept for the next job, the worker looks for such a process: one
whose working or root directory, open files or mapped files are in it.  Found
one (or could not look): the directory is discarded, never reused.

Only processes the worker may inspect are seen (its own user's, or all as
root): one of another user that the job started (e.g. through sudo) is not.
"""

from __future__ import annotations

import os


def holders(path: str | bytes) -> list[int]:
    """Pids (not this process) with their cwd, root, an open file or a mapping at or below ``path``."""
    base = os.fsencode(path).rstrip(b"/")
    inside = base + b"/"
    me = os.getpid()
    found: list[int] = []
    try:
        pids = [int(name) for name in os.listdir(b"/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid != me and _holds(pid, base, inside):
            found.append(pid)
    return found


def _holds(pid: int, base: bytes, inside: bytes) -> bool:
    proc = b"/proc/%d/" % pid

    def under(link: bytes) -> bool:
        return link == base or link.startswith(inside)

    for name in (b"cwd", b"root"):
        try:
            if under(os.readlink(proc + name)):
                return True
        except OSError:
            pass  # gone, or not ours to look at
    try:
        fds = os.listdir(proc + b"fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            if under(os.readlink(proc + b"fd/" + fd)):
                return True
        except OSError:
            pass
    try:
        with open(proc + b"maps", "rb") as f:
            maps = f.read()
    except OSError:
        return False
    return inside in maps or b" " + base + b"\n" in maps
