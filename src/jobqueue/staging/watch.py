"""What changed in a job's directory, told by the kernel (inotify; a shell).

Listing a directory of 10,000 files after every job to find what the job
changed costs an ``lstat`` per file; the kernel can say instead.  Each
directory of a job directory's tree gets an inotify watch (one per directory,
kept while the directory is parked and reused); what a job then creates,
writes, closes after writing (mapped writes included), changes the metadata
of, deletes or moves is queued as events, synchronously with the system call
that did it.  :meth:`Watcher.drain` files them by job directory
(:class:`Tracker`): the paths touched, the directories that went and those
that came.  Only those are looked at after the job (:func:`.dirplan.scope_of`),
and a parked directory in which anything happened is not reused.

Whenever events may have been lost the tracker says so (``lost``) and the
worker lists the whole directory as before: the kernel's queue overflowed, a
watch could not be added (``fs.inotify.max_user_watches``), or inotify is not
there at all.  The worker's own changes while it prepares or restores a
directory are ignored (``quiet``, a few milliseconds at a time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
from collections.abc import Iterator
from typing import Any

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: Every way a job can change what is in a directory.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
        | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_HEADER = struct.Struct("iIII")


class Tracker:
    """What the watches saw in one job directory since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.wds: dict[bytes, int] = {}  # directory (relative) -> its watch
        self.touched: set[bytes] = set()  # paths created, written, changed, deleted or moved
        self.gone: set[bytes] = set()  # directories deleted or moved away
        self.came: set[bytes] = set()  # directories created or moved in
        self.lost = True  # events may be missing: list everything (until watched and reset)
        self.unwatched = True  # a directory could not be watched: lost again at every reset
        self.quiet = False  # the worker itself is changing it: events are not the job's

    def reset(self) -> None:
        self.touched, self.gone, self.came = set(), set(), set()
        self.lost = self.unwatched

    def saw_nothing(self) -> bool:
        return not self.lost and not self.touched and not self.gone and not self.came


def events(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(watch, mask, name) of each inotify event read in ``data``."""
    offset = 0
    while offset < len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        yield wd, mask, data[offset:offset + length].rstrip(b"\0")
        offset += length


def inotify_calls() -> tuple[Any, Any, Any]:
    """libc's inotify_init1, inotify_add_watch and inotify_rm_watch (errno kept for ctypes)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    add, rm = libc.inotify_add_watch, libc.inotify_rm_watch
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    rm.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc.inotify_init1, add, rm


class Watcher:
    """One inotify instance for all the worker's job directories (thread-safe)."""

    def __init__(self) -> None:
        init, self._add, self._rm = inotify_calls()
        self.fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.lock = threading.Lock()
        self.by_wd: dict[int, tuple[Tracker, bytes]] = {}

    def watch(self, tracker: Tracker, root: str, directories: list[bytes], every: bool = False) -> None:
        """Watch these directories (relative to ``root``; b"": ``root``) for ``tracker``;
        ``every``: they are all its directories (it is watched whole if all went well)."""
        base = os.fsencode(root)
        with self.lock:
            if every:
                tracker.unwatched = False
            for rel in directories:
                wd = self._add(self.fd, base + b"/" + rel if rel else base, MASK)
                if wd < 0:  # e.g. ENOSPC: no more watches for this user
                    tracker.lost = tracker.unwatched = True
                    return
                known = self.by_wd.get(wd)
                if known is not None and known[0] is not tracker:  # cannot be: one directory, one tracker
                    tracker.lost = known[0].lost = True
                elif known is not None and known[1] != rel and tracker.wds.get(known[1]) == wd:
                    del tracker.wds[known[1]]  # a directory the job moved: named anew
                tracker.wds[rel] = wd
                self.by_wd[wd] = (tracker, rel)

    def quiet(self, tracker: Tracker) -> None:
        """The worker starts changing the directory: what is queued counts, what follows not."""
        with self.lock:
            self._drain()
            tracker.quiet = True

    def loud(self, tracker: Tracker) -> None:
        """The worker is done changing the directory: its own events are dropped, what follows counts."""
        with self.lock:
            self._drain()
            tracker.quiet = False

    def seen(self, tracker: Tracker) -> tuple[set[bytes], set[bytes], set[bytes], bool]:
        """(touched, gone, came, lost) as of now."""
        with self.lock:
            self._drain()
            return set(tracker.touched), set(tracker.gone), set(tracker.came), tracker.lost

    def take(self, tracker: Tracker) -> tuple[set[bytes], set[bytes], set[bytes], bool]:
        """(touched, gone, came, lost) as of now, and from now on the tracker starts afresh."""
        with self.lock:
            self._drain()
            seen = tracker.touched, tracker.gone, tracker.came, tracker.lost
            tracker.reset()
            return seen

    def unwatch(self, tracker: Tracker) -> None:
        with self.lock:
            for wd in tracker.wds.values():
                if self.by_wd.get(wd, (None,))[0] is tracker:
                    del self.by_wd[wd]
                    self._rm(self.fd, wd)
            tracker.wds.clear()
            tracker.lost = True

    def drain(self) -> None:
        """File every queued event with its tracker."""
        with self.lock:
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            self._file(data)

    def _file(self, data: bytes) -> None:
        for wd, mask, name in events(data):
            if mask & IN_Q_OVERFLOW:
                for tracker, _rel in self.by_wd.values():
                    if not tracker.quiet:
                        tracker.lost = True
                continue
            known = self.by_wd.get(wd)
            if known is None:
                continue
            tracker, rel = known
            if mask & IN_IGNORED:  # the directory is gone (or unwatched)
                del self.by_wd[wd]
                if tracker.wds.get(rel) == wd:
                    del tracker.wds[rel]
                continue
            if tracker.quiet:
                continue
            if not name:  # the directory itself
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    tracker.gone.add(rel)
                if rel:
                    tracker.touched.add(rel)
                else:
                    tracker.lost = True if mask & (IN_DELETE_SELF | IN_MOVE_SELF) else tracker.lost
                continue
            path = rel + b"/" + name if rel else name
            tracker.touched.add(path)
            if mask & IN_ISDIR:
                if mask & (IN_DELETE | IN_MOVED_FROM):
                    tracker.gone.add(path)
                if mask & (IN_CREATE | IN_MOVED_TO):
                    tracker.came.add(path)


_watcher: list[Watcher | None] = []


def watcher() -> Watcher | None:
    """The worker's watcher, made on first use; None where inotify is not to be had."""
    if not _watcher:
        try:
            _watcher.append(Watcher())
        except (OSError, AttributeError, TypeError):
            _watcher.append(None)
    return _watcher[0]
