"""The client's side of staging: walk DIR into a :class:`Snapshot` (a shell: files, git).

Never follows a symlink (it is sent as a link); skips sockets, FIFOs and
devices (listed in ``Snapshot.skipped`` for ``-v``); leaves out what git
ignores when DIR is in a git work tree, every ``.git`` unless ``stage_git``,
and what ``--exclude`` patterns (gitignore syntax) match.  A file is hashed
only when its (inode, size, mtime, ctime) changed since the last scan, and a
directory none of whose entries changed (the same names, modes, inodes, sizes,
mtimes and ctimes, the same subdirectories' digests) is not encoded again
(:class:`StatCache`, persisted under ``~/.cache/jobqueue``): an unchanged tree
costs one ``lstat`` per entry.  Anything that cannot be read is a
:class:`StageError` naming it, raised before a job is queued.

jq loads this module for ``--stage`` on every such job: it imports only what
the interpreter has loaded already or costs little (no msgspec, typing,
dataclasses or subprocess).
"""

from __future__ import annotations

import os
import stat
import time

from . import watchclient
from .entry import DIRECTORY, FILE, MODE_MASK, SYMLINK, hasher_for, make_directory
from .gitview import git_view, under
from .paths import UnsafePath, check_symlink_target
from .statcache import (
    HAS_LINKS,
    HAS_SKIPPED,
    CacheEntry,
    DirMemo,
    StatCache,
    StatKey,
    holds_links,
    in_background,
    memo_of,
    saving_locks,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from .entry import EntryTuple


#: A file changed within this long before a scan is hashed again next time:
#: its mtime/ctime may not yet tell a later change apart ("racy git").
RACY_NS = 2_000_000_000


class StageError(Exception):
    """Staging cannot go ahead; the message names the file and says why."""


class Snapshot:
    """DIR as it was sent: the tree's directories (by digest), where each file
    blob can be read, and each staged path's stat (to tell later local changes)."""

    def __init__(self, root: bytes, taken_ns: int) -> None:
        self.root = root  # DIR, absolute
        self.taken_ns = taken_ns  # wall clock when the scan started: later ctimes are changes made "here"
        self.root_digest = b""
        self.directories: dict[bytes, bytes] = {}  # digest -> canonical encoding, of those encoded by this scan
        self.files = 0
        self.size = 0  # bytes of file content
        self.hashed = 0  # files hashed (not found in the stat cache)
        self.relisted = 0  # directories listed (the others: unchanged, says the stage watcher)
        self.cache_path = ""  # its stat cache's file ("": none)
        #: every directory: (relative path, DirMemo or CacheEntry); the maps below are made from them when needed
        self.listed: list[tuple[bytes, DirMemo | CacheEntry]] = []
        self.hashed_blobs: dict[bytes, tuple[bytes, int]] = {}  # of the files this scan hashed (the likely asked)
        self._memos: dict[bytes, DirMemo] | None = None
        self._blobs: dict[bytes, tuple[bytes, int]] | None = None
        self._local: dict[bytes, StatKey] | None = None
        self._links: dict[bytes, bytes] | None = None
        self.saving: Any = None  # a lock held while the stat cache is being written
        self.incremental = False  # an earlier scan's stat cache was there: what it did not know changed since
        self.new_directories: list[bytes] = []  # digests unlike the last scan's for the same path
        self.new_files: list[tuple[bytes, int]] = []  # (digest, size)

    def saved(self) -> None:
        """Wait until the stat cache is written (before the process ends)."""
        if self.saving is not None:
            self.saving.acquire()
            self.saving.release()

    def directory(self, digest: bytes) -> bytes | None:
        """A directory's canonical encoding (made again from what the stat cache kept if need be)."""
        data = self.directories.get(digest)
        if data is None:
            if self._memos is None:
                self._memos = {item[1] if len(item) == 5 else item[2]: item for _rel, item in self.listed}
            item = self._memos.get(digest)
            if item is not None:
                data = self.directories[digest] = make_directory(_entries(memo_of(item)))[1]
        return data

    def changed(self, file_bytes: int, directory_bytes: int) -> list[bytes]:
        """Digests of what changed since the last scan (what a worker that had the last
        snapshot lacks), within these byte budgets; none
        when there was no last scan to compare with (everything would look new)."""
        chosen: list[bytes] = []
        if not self.incremental:
            return chosen
        for digest in self.new_directories:
            size = len(self.directories[digest])
            if size <= directory_bytes:
                chosen.append(digest)
                directory_bytes -= size
        for digest, size in self.new_files:
            if size <= file_bytes:
                chosen.append(digest)
                file_bytes -= size
        return chosen

    def blob(self, digest: bytes) -> tuple[bytes, int] | None:
        """(A relative path holding the file blob ``digest``, its size), or None."""
        found = self.hashed_blobs.get(digest)
        return found if found is not None else self.blobs.get(digest)

    @property
    def blobs(self) -> dict[bytes, tuple[bytes, int]]:
        """File digest -> (a relative path holding it, size)."""
        if self._blobs is None:
            self._blobs = {}
            for rel, item in self.listed:
                prefix = rel + b"/" if rel else b""
                memo = memo_of(item)
                for (name, mode, _ino, size, _mtime, _ctime), value in zip(memo[6], memo[3]):
                    if stat.S_ISREG(mode):
                        self._blobs.setdefault(value, (prefix + name, size))
        return self._blobs

    @property
    def local(self) -> dict[bytes, StatKey]:
        """Relative path -> its stat when snapshotted (files and symlinks)."""
        if self._local is None:
            self._local = {}
            for rel, item in self.listed:
                prefix = rel + b"/" if rel else b""
                for name, mode, ino, size, mtime, ctime in memo_of(item)[6]:
                    if not stat.S_ISDIR(mode):
                        self._local[prefix + name] = (ino, size, mtime, ctime)
        return self._local

    @property
    def links(self) -> dict[bytes, bytes]:
        """Relative path -> target, of every symlink."""
        if self._links is None:
            self._links = {}
            for prefix, memo in self._memos_with(HAS_LINKS, holds_links):
                for (name, mode, *_), value in zip(memo[6], memo[3]):
                    if stat.S_ISLNK(mode):
                        self._links[prefix + name] = value
        return self._links

    @property
    def skipped(self) -> list[tuple[bytes, str]]:
        """(path, why) of the sockets, FIFOs and devices left out, for -v."""
        return [(prefix + name, kind) for prefix, memo in self._memos_with(HAS_SKIPPED, lambda memo: bool(memo[7]))
                for name, kind in memo[7]]

    def _memos_with(self, flag: int, holds: Callable[[DirMemo], bool]) -> Iterator[tuple[bytes, DirMemo]]:
        """(path prefix, memo) of the directories that hold what ``flag`` (in a cache entry)
        or ``holds`` (of a memo) says: the others are not decoded."""
        for rel, item in self.listed:
            if item[4] & flag if len(item) == 5 else holds(item):
                yield (rel + b"/" if rel else b""), memo_of(item)


def _above(rel: bytes) -> Iterator[bytes]:
    """The directories above ``rel`` (relative to the root), up to the root (b"")."""
    while rel:
        rel = rel.rsplit(b"/", 1)[0] if 47 in rel else b""  # (47: "/", an int: no TypeError first)
        yield rel


def _entries(memo: DirMemo) -> list[EntryTuple]:
    """A directory's entries from what the scan learnt of it."""
    entries: list[EntryTuple] = []
    kids = iter(memo[1])
    for (name, mode, _ino, size, mtime, _ctime), value in zip(memo[6], memo[3]):
        if stat.S_ISDIR(mode):
            entries.append((name, DIRECTORY, stat.S_IMODE(mode), 0, 0, next(kids), b""))
        elif stat.S_ISREG(mode):
            entries.append((name, FILE, stat.S_IMODE(mode) & MODE_MASK, mtime, size, value, b""))
        else:
            entries.append((name, SYMLINK, 0o777, mtime, len(value), b"", value))
    return entries


# --- the walk -------------------------------------------------------------------------


def scan(
    root: str | bytes,
    *,
    stage_git: bool = False,
    excludes: Iterable[str] = (),
    use_git: bool = True,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> Snapshot:
    """Snapshot the tree under ``root`` (see the module's docstring)."""
    taken_ns = time.time_ns()
    root_b = os.path.abspath(os.fsencode(root))
    try:
        st = os.stat(root_b)
    except OSError as e:
        raise StageError(f"--stage {os.fsdecode(root_b)}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StageError(f"--stage {os.fsdecode(root_b)}: not a directory")
    exclude_spec = None
    patterns = list(excludes)
    if patterns:
        import pathspec  # only when asked

        exclude_spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    git = git_view(root_b) if use_git else None
    cache = StatCache(root_b, cache_dir) if use_cache else None
    snap = Snapshot(root_b, taken_ns)
    old = cache.old if cache is not None else {}
    snap.incremental = bool(old)
    new: dict[bytes, DirMemo | CacheEntry] = cache.new if cache is not None else {}
    filtering = git is not None or exclude_spec is not None
    racy_after = taken_ns - RACY_NS
    S_ISDIR, S_ISREG, S_ISLNK = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK
    # The stage watcher, asked before anything is read, says which directories changed since the
    # last scan (of the same filter); the others are taken from the stat cache without a look.
    watching = use_cache and watchclient.mode() != "off"
    view = (stage_git, tuple(patterns), git.signature if git is not None else None)
    unchanged_since: frozenset[bytes] | None = None  # the directories that changed, when the watcher says
    reply = None
    if watching and cache is not None:
        known = cache.old_watch
        reply = watchclient.ask(root_b, known[0] if known is not None and known[1] == view else None)
        if reply is not None and reply[0] is not None:
            cache.new_watch = (reply[0], view)
            if known is not None and known[1] == view:
                unchanged_since = reply[1]
    touched: set[bytes] = set()  # the changed directories and those above them
    for rel in unchanged_since or ():
        touched.update((rel, *_above(rel)))
    reused: set[bytes] = set()  # directories whose whole subtree is as the stat cache has it
    fetched = cache.fetched if cache is not None else {}
    # Directories that changed since the last snapshot other than by what the last job's results
    # wrote: a worker that holds the tree the job left (as parked directories do) lacks them.
    foreign: set[bytes] = set()
    if cache is not None:
        snap.cache_path = cache.path

    def included(rel: bytes, is_dir: bool, wholesale: bool) -> bool:
        if exclude_spec is not None and exclude_spec.match_file(os.fsdecode(rel) + ("/" if is_dir else "")):
            return False
        if git is None or wholesale:
            return True
        if rel in git.files:
            return True
        return is_dir and (rel in git.parents or under(rel, git.untracked_dirs))

    def listed(path: bytes, rel: bytes, prefix: bytes, wholesale: bool
               ) -> tuple[list[tuple[bytes, int, int, int, int, int]], list[bytes], tuple]:
        """(signature, subdirectories' digests, skipped) of directory ``path``, as it is now."""
        signature: list[tuple[bytes, int, int, int, int, int]] = []
        kids: list[bytes] = []
        skipped: list[tuple[bytes, str]] = []
        try:
            listing = list(os.scandir(path))
        except OSError as e:
            raise StageError(f"cannot read directory {os.fsdecode(path)}: {e.strerror}") from None
        for item in listing:
            name = item.name
            if name == b".git" and not stage_git:
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError as e:
                raise StageError(f"cannot stat {os.fsdecode(item.path)}: {e.strerror}") from None
            mode = st.st_mode
            if S_ISDIR(mode):
                child_rel = prefix + name
                # .git (with --stage-git) and submodules go as they are: git says nothing inside them.
                whole = wholesale or name == b".git" or (git is not None and child_rel in git.files)
                if filtering and not included(child_rel, True, whole):
                    continue
                kids.append(walk(item.path, child_rel, whole))
                signature.append((name, mode, st.st_ino, 0, 0, 0))
            elif S_ISREG(mode) or S_ISLNK(mode):
                if filtering and not included(prefix + name, False, wholesale):
                    continue
                signature.append((name, mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            else:
                skipped.append((name, "socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode)
                                else "device"))
        return signature, kids, tuple(skipped)

    def walk(path: bytes, rel: bytes, wholesale: bool) -> bytes:
        """The digest of directory ``path`` (``rel`` under DIR), its encoding in ``snap``."""
        prefix = rel + b"/" if rel else b""
        entry = old.get(rel)
        if entry is not None and unchanged_since is not None and rel not in touched:
            reused.add(rel)  # nothing happened in it or under it: taken whole (its subdirectories below)
            new[rel] = entry
            snap.listed.append((rel, entry))
            snap.files += entry[2]
            snap.size += entry[3]
            return entry[1]
        memo = loaded = memo_of(entry) if entry is not None else None
        if memo is not None and unchanged_since is not None and rel not in unchanged_since:
            # nothing happened in it, but under it: its entries are as the stat cache says
            signature, skipped = memo[6], memo[7]
            kids = [walk(path + b"/" + entry[0], prefix + entry[0],
                         wholesale or entry[0] == b".git" or (git is not None and prefix + entry[0] in git.files))
                    for entry in signature if S_ISDIR(entry[1])]
            same = memo[1] == kids
        else:
            snap.relisted += 1
            signature, kids, skipped = listed(path, rel, prefix, wholesale)
            same = memo is not None and memo[0] == signature and memo[1] == kids
        if not same or memo is None:
            before, memo = memo, remake(path, rel, prefix, signature, kids, skipped, memo)
            if cache is not None and (type(memo[0]) is list or before is None or type(before[0]) is list):
                cache.changed = True  # (what changed too recently to be trusted is not worth writing down)
        elif memo[7] != skipped:
            memo = (*memo[:7], skipped)
            if cache is not None:
                cache.changed = True
        new[rel] = entry if memo is loaded and entry is not None else memo  # (as loaded: not written again)
        snap.listed.append((rel, memo))
        snap.files += memo[5]
        snap.size += memo[4]
        return memo[2]

    def remake(path: bytes, rel: bytes, prefix: bytes, signature: list[tuple[bytes, int, int, int, int, int]],
               kids: list[bytes], skipped: tuple, memo: DirMemo | None) -> DirMemo:
        """A directory that changed (or was never seen): its entries, hashing only changed files."""
        known: dict[bytes, tuple] = {}  # name -> (st_mode, inode, size, mtime, ctime, value) as last seen
        doubtful = 1 << 63  # a timestamp from this time on was too recent to vouch for the content then
        # unless a change is explained by the last job's results, a worker holding its tree lacks this one
        alien = memo is None and (not fetched or rel not in fetched)
        if memo is not None:
            known = {item[0]: (*item[1:], value) for item, value in zip(memo[6], memo[3])}
            if type(memo[0]) is int:
                doubtful = memo[0]
            if fetched and len(known) + len(kids) - len(memo[1]) > len(signature):
                alien = True  # entries went away (only kept by --fetch-deletes: not worth telling apart)
        values: list[bytes] = []
        size = files = 0
        trusted = True
        for name, mode, ino, length, mtime, ctime in signature:
            if S_ISDIR(mode):
                values.append(b"")
                if fetched and prefix + name in foreign:
                    alien = True
                continue
            if mtime >= racy_after or ctime >= racy_after:
                trusted = False  # a change within the timestamps' grain may follow unseen
            hit = known.get(name)
            same = hit is not None and hit[:5] == (mode, ino, length, mtime, ctime) \
                and mtime < doubtful and ctime < doubtful
            if S_ISREG(mode):
                if same:
                    digest = hit[5]  # type: ignore[index]
                else:
                    digest = _hash_file(path + b"/" + name, length)
                    snap.hashed += 1
                    snap.hashed_blobs.setdefault(digest, (prefix + name, length))
                    if (hit is None or hit[5] != digest) and \
                            not (fetched and fetched.get(prefix + name) == (ino, length, mtime, ctime)):
                        snap.new_files.append((digest, length))
                        alien = True
                values.append(digest)
                size += length
                files += 1
            elif same:
                values.append(hit[5])  # type: ignore[index]
            else:
                alien = True  # a symlink changed (not worth telling apart from a fetched one)
                try:
                    values.append(os.readlink(path + b"/" + name))
                except OSError as e:
                    raise StageError(f"cannot read symlink {os.fsdecode(path + b'/' + name)}: {e.strerror}") \
                        from None
        digest, data = make_directory(_entries((None, kids, b"", values, size, files, signature)))
        snap.directories[digest] = data
        if (memo is None or memo[2] != digest) and (alien or not fetched):
            snap.new_directories.append(digest)
            foreign.add(rel)
        return (signature if trusted else racy_after, kids, digest, values, size, files, signature, skipped)

    try:
        snap.root_digest = walk(root_b, b"", False)
        if reused:
            for rel, entry in old.items():
                if rel not in new and any(above in reused for above in _above(rel)):
                    new[rel] = entry
                    snap.listed.append((rel, entry))
                    snap.files += entry[2]
                    snap.size += entry[3]
        _check_symlinks(snap)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    if watching and reply is None and (watchclient.mode() == "always" or snap.files >= watchclient.MIN_FILES):
        watchclient.start(root_b)  # (none yet: the next scans of this tree will ask it)
    if cache is not None and (cache.changed or len(cache.new) != len(cache.old) or cache.new_watch != cache.old_watch):
        snap.saving = saving_locks[cache.path] = in_background(cache.save)  # while the job is queued and staged
    elif cache is not None:
        cache.close()
    return snap


def _hash_file(path: bytes, size: int) -> bytes:
    hasher = hasher_for(size)
    try:
        with open(path, "rb", buffering=0) as f:
            while data := f.read(1 << 20):
                hasher.update(data)
    except OSError as e:
        raise StageError(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None
    return hasher.digest()


def _check_symlinks(snap: Snapshot) -> None:
    """The worker refuses a symlink that leads out of the tree: say so here first."""
    for path, target in snap.links.items():
        try:
            check_symlink_target(path, target, snap.links)
        except UnsafePath:
            raise StageError(
                f"symlink {os.fsdecode(os.path.join(snap.root, path))} -> {os.fsdecode(target)} "
                "points outside the staged directory (it would dangle on the worker); --exclude it"
            ) from None
