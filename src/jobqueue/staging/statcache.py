"""What jq remembers of a staged tree between scans (the stat cache), a shell: one
file per root under the cache home (its format: :mod:`.statjournal`, a base and
deltas appended to it), holding each directory's :data:`DirMemo` (encoded on its
own, decoded only when looked at), the stage watcher's token; and, beside it,
what the last job's results wrote.

jq loads this module for ``--stage``: only what the interpreter has at hand.
"""

from __future__ import annotations

import os

from .statjournal import Loaded, decode, encode_base, encode_delta, should_append

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


#: What the client remembers of a staged path: (inode, size, mtime_ns, ctime_ns).
StatKey = tuple[int, int, int, int]


#: What the last scan learnt of one directory (see :class:`StatCache`): (check,
#: subdirectories' digests, digest, values, bytes of its files, number of files,
#: signature, skipped).  The signature lists (name, st_mode, inode, size, mtime_ns,
#: ctime_ns) of every entry staged, in listing order; check is the signature, or,
#: when an entry changed too recently to be trusted next time, the time (ns) from
#: which a timestamp is too recent: the directory is then encoded again, and its
#: entries changed since that time hashed again; values, in the same order: a
#: file's digest, a symlink's target, b"" for a directory; skipped: (name, kind)
#: of the sockets, FIFOs and devices left out.
DirMemo = tuple

#: How the stat cache keeps a directory: (its DirMemo in marshal's format, its digest, number
#: of files, bytes of its files, flags).  Decoding all 10,000 files' memos cost a warm stage
#: 4-6 ms, though the stage watcher usually vouches for all but a few directories: a
#: directory's memo is decoded only when it is looked at.
CacheEntry = tuple
HAS_LINKS, HAS_SKIPPED = 1, 2


def cache_entry(memo: DirMemo) -> CacheEntry:
    import marshal

    flags = (HAS_LINKS if holds_links(memo) else 0) | (HAS_SKIPPED if memo[7] else 0)
    return (marshal.dumps(memo), memo[2], memo[5], memo[4], flags)


def holds_links(memo: DirMemo) -> bool:
    return memo[5] + len(memo[1]) < len(memo[6])  # (entries that are neither files nor directories)


def memo_of(item: DirMemo | CacheEntry) -> DirMemo:
    """A directory's memo, decoded from its cache entry if need be."""
    if len(item) == 5:
        import marshal

        return marshal.loads(item[0])
    return item


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --- the stat cache -------------------------------------------------------------------

#: Stat cache file -> a lock held while a scan of this process writes it.
saving_locks: dict[str, Any] = {}


class StatCache:
    """What the last scan learnt of each directory (:data:`DirMemo`), by relative
    path, trusted while the stat of its entries is unchanged.  One file per staged
    root under the cache home: a base and a journal of deltas (:mod:`.statjournal`,
    in :mod:`marshal`'s format: fast to load; a file of another format is ignored)."""

    def __init__(self, root: bytes, directory: str | None = None) -> None:
        self.root = root
        self.path = cache_path(root, directory)
        self.old: dict[bytes, CacheEntry] = {}
        self.new: dict[bytes, DirMemo | CacheEntry] = {}
        self.changed = False
        #: (the stage watcher's token, the walk's filter) as of the scan that wrote ``old``
        #: (see :mod:`.watchclient`), and as of this one
        self.old_watch: tuple | None = None
        self.new_watch: tuple | None = None
        #: What the last job's results wrote here (:func:`record_fetched`): relative path ->
        #: its stat key then (a file), or None (a directory made); what matches is as the
        #: worker has it, and not counted as changed since the last snapshot.
        self.fetched: dict[bytes, StatKey | None] = {}
        #: the file as loaded (kept open: a delta is appended to the file it is based on), and what it held
        self._file: Any = None
        self._loaded: Loaded | None = None
        saving = saving_locks.pop(self.path, None)
        if saving is not None:  # an earlier scan of this process is writing it
            saving.acquire()
            saving.release()
        import gc

        collecting = gc.isenabled()
        gc.disable()  # (a collection or two among the many tuples made here: +2 ms)
        try:
            self._file = open(os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC), "rb", buffering=0)
            loaded = self._loaded = decode(self._file.readall(), root)
            if loaded is not None:
                self.old, self.old_watch = loaded.entries, loaded.watch
                self.changed = not loaded.clean  # (what is appended after a torn record is lost: compact)
                if os.path.exists(self.path + ".fetched"):
                    import marshal

                    with open(self.path + ".fetched", "rb") as f:
                        fetched = marshal.loads(f.read())
                    if type(fetched) is dict:
                        self.fetched = fetched
        except (OSError, EOFError, ValueError, TypeError):
            pass  # no cache, or an unreadable one: hash everything
        finally:
            if collecting:
                gc.enable()

    def save(self) -> None:
        """Write what this scan learnt: a delta appended to the file loaded, or the whole
        file again (atomically, replacing the old); best effort.  Closes the file."""
        try:
            self._save()
        except OSError:
            pass
        finally:
            self.close()

    def _save(self) -> None:
        old = self.old
        # an entry taken as it was loaded is the same object (see scan): what differs is what changed
        changed = {rel: item if len(item) == 5 else cache_entry(item)
                   for rel, item in self.new.items() if old.get(rel) is not item}
        record = b""
        if self._file is not None and self._loaded is not None and should_append(self._loaded, 0):
            removed = [rel for rel in old if rel not in self.new]
            record = encode_delta(self._loaded.end, changed, removed, self.new_watch)
        if record and should_append(self._loaded, len(record)):
            written = os.write(self._file.fileno(), record)  # (O_APPEND: one write lands whole at the end)
            if written != len(record):  # (a full disk): a torn record, which the next load sees as such
                raise OSError("short write")
        else:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            temp = f"{self.path}.{os.getpid()}.tmp"
            entries = {rel: changed.get(rel, item) for rel, item in self.new.items()}  # (memos encoded once)
            with open(temp, "wb") as f:
                f.write(encode_base(self.root, entries, self.new_watch))
            os.replace(temp, self.path)
        if self.fetched:
            os.unlink(self.path + ".fetched")  # (what it told is in the memos now)

    def close(self) -> None:
        """Let go of the file loaded (a scan that saves nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def cache_path(root: bytes, directory: str | None = None) -> str:
    """The stat cache file of ``root`` (under ``directory``, by default the user's cache home)."""
    home = directory or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "jobqueue", "stat")
    import binascii  # (no hashing library loaded for a tree that needs none)

    name = os.path.basename(root.rstrip(b"/")).decode("utf-8", "replace")[:40]
    return os.path.join(home, f"{name}-{binascii.crc32(root):08x}-{len(root)}.marshal")


def record_fetched(path: str, fetched: dict[bytes, StatKey | None]) -> None:
    """Remember what a job's results wrote into the tree (see ``StatCache.fetched``), for
    the next scan of the stat cache at ``path``; best effort."""
    import marshal

    try:
        temp = f"{path}.fetched.{os.getpid()}.tmp"
        with open(temp, "wb") as f:
            f.write(marshal.dumps(fetched))
        os.replace(temp, path + ".fetched")
    except OSError:
        pass


def in_background(work: Callable[[], None]) -> Any:
    """Run ``work`` in a thread (``_thread``: jq does not load threading); returns a lock
    held until it is done."""
    import _thread

    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            work()
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    return done
