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
- :func:`results`: after the job, what it created, changed or deleted, from a
  listing of the directory.  A file whose stat identity (inode, size, mtime,
  ctime, mode) is the one written is untouched: a job cannot set a ctime back.
- :func:`restore`: the operations that bring the directory back to its tree:
  what the job touched is written again from the cache, what it created is
  removed, what it deleted is made again.
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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

from .fetchplan import Change, _same
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
        _diff_dir(b"", _load(state.root, load), _load(root, load), plan, modes, load)
        plan.ops += sorted(modes, key=lambda op: op.path, reverse=True)  # deepest first
    return plan


def _load(digest: bytes, load: Callable[[bytes], Directory]) -> Directory:
    return Directory() if digest == EMPTY else load(digest)


def _diff_dir(path: bytes, old: Directory, new: Directory, plan: Plan, modes: list[SetMode],
              load: Callable[[bytes], Directory]) -> None:
    """``path``: an existing, usable directory holding ``old``, to hold ``new``."""
    olds = {e.name: e for e in old.entries}
    news = {e.name: e for e in new.entries}
    for name in sorted(olds.keys() | news.keys()):
        before, after = olds.get(name), news.get(name)
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


# --- after the job -------------------------------------------------------------------------------------------


def _changed(state: TreeState, path: bytes, seen: Seen, entry: Entry | None) -> Change | None:
    kind = kind_of(seen[0])
    if kind == OTHER:
        return None
    if kind == SYMLINK:
        change = Change(path, SYMLINK, 0o777, seen[3], seen[2], seen[5])
    elif kind == FILE:
        change = Change(path, FILE, stat.S_IMODE(seen[0]), seen[3], seen[2])
    else:
        change = Change(path, DIRECTORY, stat.S_IMODE(seen[0]))
    if entry is not None and _same(entry, change):  # type: ignore[arg-type]
        return None
    return change


def results(state: TreeState, listing: Mapping[bytes, Seen], scope: Collection[bytes] | None = None) -> list[Change]:
    """What the job created or changed (parents first), then what it deleted
    (children first): as :func:`.fetchplan.diff` of the tree and the listing, but a
    path whose stat identity is the one written is not looked at.  With ``scope``
    (the paths the job may have touched, :func:`scope_of`), ``listing`` holds only
    those of them that exist, and every other path is as written."""
    entries, stats = state.entries, state.stats
    changes: list[Change] = []
    gone: list[bytes] = []
    present = 0
    for path in listing if scope is None else scope:
        seen = listing.get(path)
        entry = entries.get(path)
        if seen is None:  # (scope only)
            if entry is not None:
                gone.append(path)
            continue
        if entry is not None:
            if stats.get(path) == seen:
                present += 1
                continue
            if kind_of(seen[0]) != OTHER:
                present += 1
            elif scope is not None:
                gone.append(path)
        change = _changed(state, path, seen, entry)
        if change is not None:
            changes.append(change)
    changes.sort(key=lambda c: c.path)
    if scope is None and present < len(entries):
        gone = [path for path in entries
                if (now := listing.get(path)) is None or kind_of(now[0]) == OTHER]
    gone.sort(reverse=True)
    changes += [Change(path, entries[path].kind, deleted=True) for path in gone]
    return changes


def restore(state: TreeState, listing: Mapping[bytes, Seen], scope: Collection[bytes] | None = None) -> Plan:
    """The plan that brings the directory, as ``listing`` shows it, back to ``state``'s
    tree.  With ``scope`` (see :func:`results`), every file and symlink in it is
    written anew (the job touched it, whatever its stat says), and nothing else is
    looked at."""
    plan = Plan(state.root)
    entries, stats = state.entries, state.stats
    modes: dict[bytes, int] = {}  # directories' modes to set at the end (deepest first)
    unlock: set[bytes] = set()  # directories to make usable first (their mode is among the above)
    usable: dict[bytes, int] = {}  # directory -> owner bits already seen to (0o100: enter, 0o300: change)
    removals: list[bytes] = []
    writes: list[Op] = []

    def now(path: bytes) -> int | None:
        """The st_mode of ``path`` as it is (None: absent)."""
        seen = listing.get(path)
        if seen is not None:
            return seen[0]
        if scope is None or path in scope or (entry := entries.get(path)) is None:
            return None
        return _IFMT[entry.kind] | entry.mode  # untouched: as written

    def need(directory: bytes, bits: int) -> None:
        """Something changes inside ``directory`` (bits 0o300) or below it (0o100): it and
        the directories above it must allow that, else they are unlocked first."""
        while directory and usable.get(directory, 0) & bits != bits:
            usable[directory] = usable.get(directory, 0) | bits
            mode, entry = now(directory), entries.get(directory)
            if mode is not None and entry is not None and kind_of(mode) == entry.kind == DIRECTORY and \
                    stat.S_IMODE(mode) & bits != bits:  # a directory that stays, as it is now
                unlock.add(directory)
                modes[directory] = entry.mode
            directory, bits = parent_of(directory), 0o100

    for path in listing if scope is None else scope:
        seen = listing.get(path)
        if seen is None:
            continue
        kind = kind_of(seen[0])
        entry = entries.get(path)
        if entry is not None and entry.kind == kind:
            if kind == DIRECTORY:
                if stat.S_IMODE(seen[0]) != entry.mode:
                    modes[path] = entry.mode
                    need(parent_of(path), 0o100)
            elif scope is not None or stats.get(path) != seen or state.racy(seen):
                need(parent_of(path), 0o300)
                writes.append((MakeLink if kind == SYMLINK else WriteFile)(path, entry, True))
            continue
        parent = parent_of(path)
        if parent and ((above := entries.get(parent)) is None or above.kind != DIRECTORY):
            continue  # inside something that goes as a whole
        need(parent, 0o300)
        removals.append(path)
    for path in entries if scope is None else [p for p in scope if p in entries]:
        entry = entries[path]
        mode = now(path)
        if mode is not None and kind_of(mode) == entry.kind:
            continue
        need(parent_of(path), 0o300)
        if entry.kind == DIRECTORY:
            writes.append(MakeDir(path))
            modes[path] = entry.mode
        else:
            writes.append((MakeLink if entry.kind == SYMLINK else WriteFile)(path, entry, False))
    plan.ops += [Unlock(path) for path in sorted(unlock)]
    plan.ops += [Remove(path) for path in sorted(removals)]
    writes.sort(key=lambda op: op.path)
    plan.ops += writes
    plan.ops += [SetMode(path, mode) for path, mode in sorted(modes.items(), reverse=True)]
    return plan


_IFMT = {FILE: stat.S_IFREG, DIRECTORY: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}


def scope_of(state: TreeState, touched: Iterable[bytes], gone: Iterable[bytes], load: Callable[[bytes], Directory],
             ) -> set[bytes]:
    """The paths a job may have changed, from what the watches saw: the paths
    ``touched``, and every path of the tree under a directory that went (``gone``:
    deleted, moved away or replaced).  (Directories that came are the shell's to
    walk: everything in them is new.)"""
    scope = set(touched)
    for path in gone:
        scope.add(path)
        entry = state.entries.get(path)
        if entry is not None and entry.kind == DIRECTORY:
            for child in flat(entry.digest, load):
                scope.add(path + b"/" + child)
    return scope


def adopt(state: TreeState, files: Mapping[bytes, Entry], new_dirs: Mapping[bytes, int],
          load: Callable[[bytes], Directory], encode: Callable[[list[Entry]], tuple[bytes, bytes]],
          ) -> tuple[Plan, dict[bytes, bytes]]:
    """The tree the directory holds if it keeps the job's version of ``files`` (path ->
    entry, as the client took them back: its next tree will hold them), with the
    directories that lead to them: those of the tree re-encoded, ``new_dirs`` (path ->
    mode) made.  Returns the plan (no operations: the files are there already) and the
    directory blobs it names (digest -> encoding; ``encode``: :func:`.manifest.make_directory`)."""
    plan = Plan(state.root)
    children: dict[bytes, dict[bytes, Entry]] = {}  # directory -> its entries that change
    for path, entry in files.items():
        parent, _, name = path.rpartition(b"/")
        children.setdefault(parent, {})[name] = entry
        plan.added[path] = entry
        held = state.entries.get(path)
        if held is not None and held.kind == DIRECTORY:  # a file where the tree had a directory
            plan.removed += [path + b"/" + child for child in flat(held.digest, load)]
        while parent:
            parent, _, name = parent.rpartition(b"/")
            children.setdefault(parent, {})
    blobs: dict[bytes, bytes] = {}
    for directory in sorted(children, key=lambda d: d.count(b"/") + bool(d), reverse=True):  # deepest first
        held = state.entries.get(directory)
        if not directory:
            old = _load(state.root, load).entries
        elif held is not None and held.kind == DIRECTORY and directory not in new_dirs:
            old = load(held.digest).entries
        else:
            old = ()
        entries = {e.name: e for e in old}
        entries.update(children[directory])
        digest, data = encode(list(entries.values()))
        blobs[digest] = data
        if not directory:
            plan.root = digest
            continue
        parent, _, name = directory.rpartition(b"/")
        mode = new_dirs[directory] if directory in new_dirs or held is None else held.mode
        entry = Entry(name, DIRECTORY, mode, 0, 0, digest)
        children[parent][name] = entry
        plan.added[directory] = entry
    return plan, blobs


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
        for entry in _load(digest, load).entries:
            child = _child(path, entry.name)
            out[child] = entry
            if entry.kind == DIRECTORY:
                walk(child, entry.digest)

    walk(b"", root)
    return out

