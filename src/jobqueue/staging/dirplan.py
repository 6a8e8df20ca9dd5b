"""A job's directory on the worker, built once and reused: the decisions, pure (the shell is :mod:`.materialise`).

A staged job's directory is not thrown away when the job ends: it is *parked*,
brought back to the tree it was built for, and the next job of that tree (or a
similar one) takes it, turned into its own tree.  A warm stage then costs in
proportion to what changed, not to the size of the tree.

- :class:`TreeState`: what the worker knows of such a directory: the tree it
  holds (flat manifest and root digest), the stat identity (:data:`Seen`) of
  every file and symlink as written, the digests it holds (the cache keeps them
  pinned) and its symlinks.
- :func:`transform`: the operations that turn a directory holding one tree into
  another, from a Merkle diff of their per-directory digests: an unchanged
  subtree is skipped whole, so an unchanged tree costs nothing and one changed
  file costs the directories above it.  A fresh directory is the transform
  from the empty tree.
- After the job (:mod:`.afterjob`): what it created, changed or deleted, and
  the operations that bring the directory back to its tree.
- :func:`choose`: which parked directory a job takes: the one holding its
  tree, else the one sharing most of it, else none (a fresh one).

A stat identity recorded within :data:`RACY_NS` of the moment the job could
start may not tell a later change apart (timestamps have the kernel's tick
as their grain): such files are restored whether they look touched or not, as
git treats "racily clean" index entries.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from .manifest import DIRECTORY, FILE, SYMLINK, BadManifest, Directory, Entry
from .paths import UnsafePath, check_symlink_target

#: A path as found in a job's directory: (st_mode, st_ino, st_size, st_mtime_ns,
#: st_ctime_ns, symlink target).  Directories carry only their mode and inode
#: (their times change with their entries).
Seen = tuple[int, int, int, int, int, bytes]
#: Kinds in a listing besides the manifest's: a socket, FIFO or device (never staged, never brought back).
OTHER = 3
#: The no-tree root: an empty directory.
EMPTY = b""
#: Timestamps' grain, with room to spare (the kernel's tick is at most 10 ms).
RACY_NS = 20_000_000

K = TypeVar("K")


def kind_of(st_mode: int) -> int:
    if stat.S_ISREG(st_mode):
        return FILE
    if stat.S_ISDIR(st_mode):
        return DIRECTORY
    if stat.S_ISLNK(st_mode):
        return SYMLINK
    return OTHER


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _child(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


# --- operations on a directory ----------------------------------------------------------------------


class Op:
    __slots__ = ("path",)

    def __init__(self, path: bytes) -> None:
        self.path = path

    def _key(self) -> tuple[object, ...]:
        return (type(self).__name__, self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._key()[1:]!r}"


class Unlock(Op):
    """Make an existing directory usable (``0o700``) before anything inside it changes;
    a :class:`SetMode` at the end gives it its mode back."""

    __slots__ = ()


class Remove(Op):
    """Remove the path, whatever it is (a directory with everything in it)."""

    __slots__ = ()


class MakeDir(Op):
    """Make a directory (``0o700`` until its :class:`SetMode`, after what goes in it)."""

    __slots__ = ()


class WriteFile(Op):
    """Write a file from its blob, with its mode and mtime; ``replace``: over the file
    that is there (the shell writes into it when that is safe, else renames a new
    one into place), else where nothing is."""

    __slots__ = ("entry", "replace")

    def __init__(self, path: bytes, entry: Entry, replace: bool) -> None:
        super().__init__(path)
        self.entry = entry
        self.replace = replace

    def _key(self) -> tuple[object, ...]:
        return (type(self).__name__, self.path, self.entry, self.replace)


class MakeLink(WriteFile):
    """Make a symlink (``replace``: over what is there)."""

    __slots__ = ()


class SetAttrs(Op):
    """Give a file that holds the right bytes its mode and mtime."""

    __slots__ = ("entry",)

    def __init__(self, path: bytes, entry: Entry) -> None:
        super().__init__(path)
        self.entry = entry

    def _key(self) -> tuple[object, ...]:
        return (type(self).__name__, self.path, self.entry)


class SetMode(Op):
    """Give a directory its mode, once everything inside it is done (deepest first)."""

    __slots__ = ("mode",)

    def __init__(self, path: bytes, mode: int) -> None:
        super().__init__(path)
        self.mode = mode

    def _key(self) -> tuple[object, ...]:
        return (type(self).__name__, self.path, self.mode)


#: Operations whose result's stat identity is recorded.
WRITES = (WriteFile, MakeLink, SetAttrs)


class Plan:
    """Operations in the order to apply them, and what they change of the tree held."""

    __slots__ = ("ops", "root", "added", "removed", "links_changed")

    def __init__(self, root: bytes) -> None:
        self.ops: list[Op] = []
        self.root = root  # the tree the directory holds once they are applied
        self.added: dict[bytes, Entry] = {}  # manifest paths made or changed
        self.removed: list[bytes] = []  # manifest paths gone (whole subtrees listed)
        self.links_changed = False

    def written(self) -> list[bytes]:
        """Paths whose stat identity the shell records after applying the plan."""
        return [op.path for op in self.ops if isinstance(op, WRITES)]


# --- the state of a directory ------------------------------------------------------------------------


class TreeState:
    """What the worker knows of one job directory (see the module's docstring)."""

    def __init__(self) -> None:
        self.root = EMPTY
        self.entries: dict[bytes, Entry] = {}  # relative path -> its manifest entry
        self.stats: dict[bytes, Seen] = {}  # files and symlinks: their stat identity as written
        self.digests: Counter[bytes] = Counter()  # root, directories and file contents held (pinned)
        self.links: dict[bytes, bytes] = {}  # symlinks: path -> target
        self.below: Counter[bytes] = Counter()  # directory (b"": the root) -> entries below it, at any depth
        self.size = 0  # bytes of its files
        self.racy_ns = 0  # a stat identity whose ctime is at or after this may hide a change

    def apply(self, plan: Plan, stats: Mapping[bytes, Seen], prepared_ns: int | None = None) -> tuple[
            list[bytes], list[bytes]]:
        """Record that ``plan`` was applied; ``stats``: the stat identity of what it wrote;
        ``prepared_ns``: when the directory was ready for a job (the racy bound follows
        it).  Returns (digests now held, digests no longer held): the pins to update."""
        gained: list[bytes] = []
        lost: list[bytes] = []
        digests = self.digests
        if plan.root != self.root:
            self._count(plan.root, 1, gained)
        for path, entry in plan.added.items():  # gains first: a moved subtree's digests never drop to zero
            old = self.entries.get(path)
            if old is not None:
                self._forget(path, old, lost)
            else:
                self._count_below(path, 1)
            self.entries[path] = entry
            if entry.kind == SYMLINK:
                self.links[path] = entry.target
            else:
                self._count(entry.digest, 1, gained)
                if entry.kind == FILE:
                    self.size += entry.size
        for path in plan.removed:
            if path not in plan.added:
                old = self.entries.pop(path, None)
                if old is not None:
                    self._forget(path, old, lost)
                    self._count_below(path, -1)
        if plan.root != self.root:
            self._count(self.root, -1, lost)
            self.root = plan.root
        self.stats.update(stats)
        if prepared_ns is not None:
            self.racy_ns = prepared_ns - RACY_NS
        lost = [d for d in lost if digests[d] <= 0]
        for d in lost:
            del digests[d]
        return [d for d in gained if digests[d] > 0], lost

    def _count(self, digest: bytes, n: int, changed: list[bytes]) -> None:
        if digest == EMPTY:
            return
        before = self.digests[digest]
        self.digests[digest] = before + n
        if (before == 0) != (before + n == 0):
            changed.append(digest)

    def _count_below(self, path: bytes, n: int) -> None:
        below = self.below
        while path:
            path = path.rpartition(b"/")[0]
            below[path] += n
            if not below[path]:
                del below[path]

    def _forget(self, path: bytes, old: Entry, lost: list[bytes]) -> None:
        self.stats.pop(path, None)
        if old.kind == SYMLINK:
            del self.links[path]
        else:
            self._count(old.digest, -1, lost)
            if old.kind == FILE:
                self.size -= old.size

    def racy(self, seen: Seen) -> bool:
        return seen[4] >= self.racy_ns

    def check_links(self) -> None:
        """:class:`BadManifest` if a symlink of the tree leads out of it."""
        for path, target in self.links.items():
            try:
                check_symlink_target(path, target, self.links)
            except UnsafePath as e:
                raise BadManifest(str(e)) from None


# --- from one tree to another ------------------------------------------------------------------------------


def transform(state: TreeState, root: bytes, load: Callable[[bytes], Directory]) -> Plan:
    """The plan that turns the directory holding ``state`` (as recorded: restored)
    into one holding the tree ``root``.  ``load`` returns a directory blob, validated
    (:func:`.manifest.decode_directory`); only directories that differ are loaded."""
    plan = Plan(root)
    if root != state.root:
        modes: list[SetMode] = []
        _diff_dir(b"", load_dir(state.root, load), load_dir(root, load), plan, modes, load)
        plan.ops += sorted(modes, key=lambda op: op.path, reverse=True)  # deepest first
    return plan


def load_dir(digest: bytes, load: Callable[[bytes], Directory]) -> Directory:
    return Directory() if digest == EMPTY else load(digest)


def _diff_dir(path: bytes, old: Directory, new: Directory, plan: Plan, modes: list[SetMode],
              load: Callable[[bytes], Directory]) -> None:
    """``path``: an existing, usable directory holding ``old``, to hold ``new``."""
    olds = {e.name: e for e in old.entries}
    news = {e.name: e for e in new.entries}
    for name in sorted(olds.keys() | news.keys()):
        before, after = olds.get(name), news.get(name)
        if before == after:  # (the same entry, a whole subtree alike: most of them)
            continue
        child = _child(path, name)
        if before is not None and after is not None and before.kind == after.kind:
            if after.kind == DIRECTORY:
                if before.digest != after.digest:
                    if before.mode & 0o700 != 0o700:  # to be entered and changed: usable first
                        plan.ops.append(Unlock(child))
                        modes.append(SetMode(child, after.mode))
                    _diff_dir(child, load(before.digest), load(after.digest), plan, modes, load)
                if before.mode != after.mode:
                    modes.append(SetMode(child, after.mode))
                if before.digest != after.digest or before.mode != after.mode:
                    plan.added[child] = after
            elif before != after:
                if after.kind == FILE and before.digest == after.digest:
                    plan.ops.append(SetAttrs(child, after))
                else:
                    plan.ops.append((MakeLink if after.kind == SYMLINK else WriteFile)(child, after, True))
                    plan.links_changed |= after.kind == SYMLINK
                plan.added[child] = after
            continue
        if before is not None:
            plan.ops.append(Remove(child))
            _removed(child, before, plan, load)
        if after is not None:
            _create(child, after, plan, modes, load)


def _removed(path: bytes, entry: Entry, plan: Plan, load: Callable[[bytes], Directory]) -> None:
    plan.removed.append(path)
    if entry.kind == SYMLINK:
        plan.links_changed = True
    elif entry.kind == DIRECTORY:
        for child in load(entry.digest).entries:
            _removed(_child(path, child.name), child, plan, load)


def _create(path: bytes, entry: Entry, plan: Plan, modes: list[SetMode], load: Callable[[bytes], Directory]) -> None:
    plan.added[path] = entry
    if entry.kind == FILE:
        plan.ops.append(WriteFile(path, entry, False))
    elif entry.kind == SYMLINK:
        plan.ops.append(MakeLink(path, entry, False))
        plan.links_changed = True
    else:
        plan.ops.append(MakeDir(path))
        inner: list[SetMode] = []
        for child in load(entry.digest).entries:
            _create(_child(path, child.name), child, plan, inner, load)
        modes.append(SetMode(path, entry.mode))
        modes += inner


# --- which parked directory -------------------------------------------------------------------------------------


def choose(root: bytes, candidates: Sequence[tuple[K, TreeState]], load: Callable[[bytes], Directory | None],
           budget: int = 4096) -> K | None:
    """The candidate (in order of preference, e.g. ready ones first) to turn into the
    tree ``root``: the first holding it, else the one sharing most of it, as far
    as a look at ``budget`` entries per candidate tells (``load``: a directory
    blob, None if absent), provided it shares more than it lacks; else None."""
    for key, state in candidates:
        if state.root == root:
            return key
    best: K | None = None
    best_score = 0
    for key, state in candidates:
        shared, differ = _similarity(state, root, load, budget)
        if shared > differ and shared > best_score:
            best, best_score = key, shared
    return best


def _similarity(state: TreeState, root: bytes, load: Callable[[bytes], Directory | None], budget: int) -> tuple[
        int, int]:
    """(entries shared, entries that differ), an identical subtree counting with everything in it."""
    shared = differ = 0
    stack = [(b"", root)]
    while stack and budget > 0:
        path, digest = stack.pop()
        directory = load(digest)
        if directory is None:
            differ += 1
            continue
        for entry in directory.entries:
            budget -= 1
            child = _child(path, entry.name)
            held = state.entries.get(child)
            if held is None or held.kind != entry.kind:
                differ += 1
            elif held.digest == entry.digest and held.target == entry.target:
                shared += 1 + state.below.get(child, 0)
            elif entry.kind == DIRECTORY:
                stack.append((child, entry.digest))
            else:
                differ += 1
    return shared, differ


def flat(root: bytes, load: Callable[[bytes], Directory]) -> dict[bytes, Entry]:
    """The tree ``root`` as relative path -> entry (for tests and tools)."""
    out: dict[bytes, Entry] = {}

    def walk(path: bytes, digest: bytes) -> None:
        for entry in load_dir(digest, load).entries:
            child = _child(path, entry.name)
            out[child] = entry
            if entry.kind == DIRECTORY:
                walk(child, entry.digest)

    walk(b"", root)
    return out

