"""After a staged job, pure (the decisions; the shell is :mod:`.parking`).

- :func:`results`: what the job created, changed or deleted, from a listing of
  its directory.  A file whose stat identity (inode, size, mtime, ctime, mode)
  is the one written is untouched: a job cannot set a ctime back.
- :func:`restore`: the operations that bring the directory back to its tree:
  what the job touched is written again from the cache, what it created is
  removed, what it deleted is made again.
- :func:`scope_of`: which paths to look at, from what the watches saw.
- :func:`adopt`: keep what the client took back as the directory's tree.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Collection, Iterable, Mapping

from .dirplan import (
    OTHER,
    MakeDir,
    MakeLink,
    Op,
    Plan,
    Remove,
    Seen,
    SetMode,
    TreeState,
    Unlock,
    WriteFile,
    flat,
    kind_of,
    load_dir,
    parent_of,
)
from .fetchplan import Change, _same
from .manifest import DIRECTORY, FILE, SYMLINK, Directory, Entry


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
            old = load_dir(state.root, load).entries
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


