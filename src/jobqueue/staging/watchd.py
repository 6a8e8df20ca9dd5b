"""The stage watcher: one process per staged tree that tells jq what changed (a shell
around :class:`.journal.Journal`).

Started by jq (``python -m jobqueue.staging.watchd ROOT``, see :mod:`.watchclient`)
the first time a large tree is staged; it watches every directory of the tree
with inotify, answers "what changed since my token?" on an abstract Unix socket
(to its own user only), and ends when nobody asked for
``$JOBQUEUE_STAGE_WATCH_IDLE`` seconds (default 600), when the tree is removed,
moved or unmounted, or when asked to (``jobqueue.staging.watchclient.stop``).

On a file system whose changes may come from elsewhere (NFS, CIFS, FUSE...), on
which inotify sees only this machine's changes, it watches nothing and answers
so: jq lists the tree every time, as without a watcher.  So it does when a
watch cannot be added (``fs.inotify.max_user_watches``).  What inotify cannot
see at all: writes through a shared mapping of a file opened earlier, and
writes through a hard link that lies outside the tree; ``JOBQUEUE_STAGE_WATCH=0``
turns the watcher off for trees changed that way.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import socket
import sys
import time
from typing import Any

from .journal import Journal
from .watch import IN_DONT_FOLLOW, MASK, events, inotify_calls
from .watchclient import ENV_IDLE, socket_name

#: File systems on which inotify sees every change (all are made on this machine).
LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "ramfs", "bcachefs", "reiserfs",
    "jfs", "nilfs2", "hfsplus", "vfat", "exfat", "ntfs3",
})
_CHECK_EVERY = 5.0  # seconds: the longest wait before the idle time is looked at again


def file_system_type(path: bytes, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    real = os.path.realpath(path)
    best, kind = -1, None
    try:
        with open(mountinfo, "rb") as f:
            for line in f:
                fields = line.split()
                if b"-" not in fields:
                    continue
                point = fields[4].replace(b"\\040", b" ")
                at = fields.index(b"-")
                inside = real == point or real.startswith(point.rstrip(b"/") + b"/")
                if inside and len(point) >= best:
                    best, kind = len(point), fields[at + 1].decode("ascii", "replace")
    except OSError:
        return None
    return kind


class StageWatcher:
    """The watches, the journal and the socket of one tree."""

    def __init__(self, root: bytes, idle: float) -> None:
        self.root = root
        self.idle = idle
        self.journal = Journal(epoch=int.from_bytes(os.urandom(7), "big"))
        self.watching = file_system_type(root) in LOCAL_FILE_SYSTEMS
        self.fd = -1
        if self.watching:
            init, self._add, self._rm = inotify_calls()
            self.fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
            if self.fd < 0:
                self.watching = False
        if self.watching:
            self.watch(b"")
        self.last_asked = time.monotonic()

    def watch(self, top: bytes) -> None:
        """Watch directory ``top`` and everything under it (the watch first, then the
        listing: what is made in between is an event)."""
        pending = [top]
        while pending and self.watching:
            rel = pending.pop()
            path = self.root + b"/" + rel if rel else self.root
            wd = self._add(self.fd, path, MASK if rel else MASK & ~IN_DONT_FOLLOW)
            if wd < 0:
                if rel and ctypes_errno() in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone already: its parent's event says so
                self.watching = False  # e.g. ENOSPC: changes could go unseen; answer "list everything"
                return
            self.journal.watched(rel, wd)
            try:
                with os.scandir(path) as listing:
                    for entry in listing:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(rel + b"/" + entry.name if rel else entry.name)
            except OSError:
                continue  # gone or unreadable: jq's scan says what it must

    def read_events(self) -> None:
        while self.watching:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            for wd, mask, name in events(data):
                for top in self.journal.event(wd, mask, name):
                    self.watch(top)
            for wd in self.journal.dropped:
                self._rm(self.fd, wd)
            self.journal.dropped.clear()

    def answer(self, request: object) -> tuple[bytes, int, Any, Any]:
        """The answer to one request (see :mod:`.watchclient`)."""
        self.last_asked = time.monotonic()
        if type(request) is not tuple or len(request) != 3 or request[1] != self.root:
            return (self.root, os.getpid(), None, None)
        kind, _root, token = request
        if kind == "stop":
            self.journal.root_gone = True
        if not self.watching or kind != "ask":
            return (self.root, os.getpid(), None, None)
        self.read_events()  # every change made before the question is counted in the answer
        if not self.watching:
            return (self.root, os.getpid(), None, None)
        if token is not None and not (type(token) is tuple and len(token) == 2
                                      and all(type(x) is int for x in token)):
            token = None
        reply = self.journal.ask(token)
        changed = None if reply.changed is None else sorted(reply.changed)
        return (self.root, os.getpid(), reply.token, changed)


def ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def serve(root: bytes, idle: float) -> int:
    name = socket_name(root)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(name)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return 0  # another watcher of this tree was quicker
        raise
    # Listening before the watches are all in place: a jq that asks meanwhile waits for the
    # answer (or gives up and lists the tree) rather than start another watcher.
    listener.listen(64)
    watcher = StageWatcher(root, idle)
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    if watcher.watching:
        poller.register(watcher.fd, select.POLLIN)
    while not watcher.journal.root_gone:
        left = watcher.last_asked + idle - time.monotonic()
        if left <= 0:
            break
        for fd, _events in poller.poll(1000 * min(left, _CHECK_EVERY)):
            if fd == watcher.fd:
                watcher.read_events()
            else:
                _serve_one(listener, watcher)
    return 0


def _serve_one(listener: socket.socket, watcher: StageWatcher) -> None:
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    with conn:
        try:
            conn.settimeout(1.0)
            _pid, uid, _gid = memoryview(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)).cast("i")
            if uid != os.getuid():
                return
            chunks = []
            while data := conn.recv(1 << 16):
                chunks.append(data)
                if sum(map(len, chunks)) > 1 << 20:
                    return
            try:
                request = marshal.loads(b"".join(chunks))
            except (EOFError, ValueError, TypeError):
                return
            conn.sendall(marshal.dumps(watcher.answer(request)))
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobqueue.staging.watchd ROOT", file=sys.stderr)
        return 2
    try:
        idle = float(os.environ.get(ENV_IDLE) or 600)
    except ValueError:
        idle = 600.0
    root = os.path.abspath(os.fsencode(args[0]))
    os.chdir("/")  # hold no directory of the tree (it may be unmounted)
    return serve(root, idle)


if __name__ == "__main__":
    sys.exit(main())
