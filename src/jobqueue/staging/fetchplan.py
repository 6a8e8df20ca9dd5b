"""Which results come back, pure: compare the job's final tree with its snapshot.

The worker reports every path the job created or changed (kind, mode, size,
mtime or symlink target differ from the snapshot) and, as deletions, what it
removed (:func:`diff`).  The client then picks (:func:`select`): ``--fetch``
patterns (gitignore syntax, relative to DIR) or ``--no-fetch``, deletions
only with ``--fetch-deletes``, and never a path that changed *here* while the
job ran (:func:`changed_here`): that one is kept, with one line on stderr.
Symlinks that would lead outside DIR once everything is written are refused
(:func:`refused_symlinks`).

jq loads this module with ``--stage``: plain classes, no typing at run time.
"""

from __future__ import annotations

from .entry import DIRECTORY, SYMLINK
from .paths import UnsafePath, check_symlink_target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .manifest import Entry

StatKey = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns), as scan.stat_key


class Change:
    """A path the job created, changed or (``deleted``) removed."""

    __slots__ = ("path", "kind", "mode", "mtime_ns", "size", "target", "deleted")

    def __init__(self, path: bytes, kind: int, mode: int = 0, mtime_ns: int = 0, size: int = 0,
                 target: bytes = b"", deleted: bool = False) -> None:
        self.path = path
        self.kind = kind
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.size = size
        self.target = target
        self.deleted = deleted

    def _key(self) -> tuple[bytes, int, int, int, int, bytes, bool]:
        return (self.path, self.kind, self.mode, self.mtime_ns, self.size, self.target, self.deleted)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Change) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Change{self._key()!r}"


def _same(before: Entry, after: Entry) -> bool:
    if before.kind != after.kind:
        return False
    if after.kind == DIRECTORY:
        return True  # a directory's own mode or time changing brings nothing back
    if after.kind == SYMLINK:
        return before.target == after.target
    return before.mode == after.mode and before.size == after.size and before.mtime_ns == after.mtime_ns


def diff(snapshot: Mapping[bytes, Entry], final: Mapping[bytes, Entry]) -> list[Change]:
    """Created or changed paths (parents before children), then deleted ones
    (children before parents, so directories empty before they go)."""
    changes = [
        Change(path, e.kind, e.mode, e.mtime_ns, e.size, e.target)
        for path, e in sorted(final.items())
        if (before := snapshot.get(path)) is None or not _same(before, e)
    ]
    deleted = [Change(path, e.kind, deleted=True) for path, e in sorted(snapshot.items(), reverse=True)
               if path not in final]
    return changes + deleted


class FetchRules:
    __slots__ = ("patterns", "none", "deletes")

    def __init__(self, patterns: tuple[str, ...] = (), none: bool = False, deletes: bool = False) -> None:
        self.patterns = patterns  # --fetch; empty: everything
        self.none = none  # --no-fetch
        self.deletes = deletes  # --fetch-deletes


def changed_here(before: StatKey | None, now: StatKey | None, taken_ns: int) -> bool:
    """Whether a local path changed since the snapshot was taken: a staged one
    whose stat differs (deleted included); an unstaged one that appeared or
    changed after the snapshot (its ctime, which nobody can set back, is later)."""
    if before is not None:
        return now != before
    return now is not None and now[3] >= taken_ns


class Selection:
    __slots__ = ("fetch", "delete", "kept")

    def __init__(self) -> None:
        self.fetch: list[Change] = []  # files and symlinks to bring back, directories the job created
        self.delete: list[Change] = []  # paths to remove locally
        self.kept: list[bytes] = []  # changed here while the job ran: left as they are


def select(
    changes: Sequence[Change],
    rules: FetchRules,
    matches: Callable[[bytes, bool], bool] | None,
    before: Mapping[bytes, StatKey],
    now: Callable[[bytes], StatKey | None],
    taken_ns: int,
) -> Selection:
    """What to bring back.  ``matches(path, is_dir)`` applies ``--fetch`` patterns
    (None: everything); ``before`` is the snapshot's stat of each staged path and
    ``now(path)`` the local one at this moment."""
    selection = Selection()
    if rules.none:
        return selection
    for change in changes:
        if change.deleted and not rules.deletes:
            continue
        if matches is not None and not matches(change.path, change.kind == DIRECTORY):
            continue
        if change.kind == DIRECTORY:  # created (made if missing), or deleted (removed if then empty)
            (selection.delete if change.deleted else selection.fetch).append(change)
            continue
        if changed_here(before.get(change.path), now(change.path), taken_ns):
            selection.kept.append(change.path)
        elif change.deleted:
            selection.delete.append(change)
        else:
            selection.fetch.append(change)
    return selection


class _FinalLinks(dict[bytes, bytes]):
    """The symlinks under DIR as they will be once the results are written: those
    brought back; elsewhere the local ones, but where a file brought back or a
    deletion replaces one.  (A dict for :func:`.paths.check_symlink_target`, which only calls ``get``.)"""

    def __init__(self, pending: Mapping[bytes, bytes], replaced: set[bytes],
                 local: Callable[[bytes], bytes | None]) -> None:
        super().__init__()
        self.pending, self.replaced, self.local = pending, replaced, local
        self.seen: dict[bytes, bytes | None] = {}  # local lookups, each made once

    def get(self, path: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        if path in self.pending:
            return self.pending[path]
        if path in self.replaced:
            return default
        if path not in self.seen:
            self.seen[path] = self.local(path)
        found = self.seen[path]
        return default if found is None else found


def refused_symlinks(changes: Sequence[Change], local_link: Callable[[bytes], bytes | None]) -> dict[bytes, str]:
    """The symlinks among ``changes`` (what is about to be brought back and deleted here)
    that would lead outside DIR once written: path -> why.

    A target resolves as the kernel will resolve it afterwards, following the other
    symlinks: those brought back, and elsewhere the local ones (``local_link(path)``:
    the target of the symlink at ``path`` here, None if there is none), but where a
    file brought back or a deletion replaces one (a directory is never made over a
    symlink), so that a chain (``x/up -> ..`` and ``l -> x/up/..``) is seen for what
    it is.  One pass is enough: a refused symlink is not written (its path stays as it
    is here), but any target resolved through it was refused with it."""
    replaced = {c.path for c in changes if c.deleted or c.kind not in (SYMLINK, DIRECTORY)}
    pending = {c.path: c.target for c in changes if c.kind == SYMLINK and not c.deleted}
    links = _FinalLinks(pending, replaced, local_link)
    refused: dict[bytes, str] = {}
    for path, target in pending.items():
        try:
            check_symlink_target(path, target, links)
        except UnsafePath as e:
            refused[path] = str(e)
    return refused
