"""Which results come back, pure: compare the job's final tree with its snapshot.

The worker reports every path the job created or changed (kind, mode, size,
mtime or symlink target differ from the snapshot) and, as deletions, what it
removed (:func:`diff`).  The client then picks (:func:`select`): ``--fetch``
patterns (gitignore syntax, relative to DIR) or ``--no-fetch``, deletions
only with ``--fetch-deletes``, and never a path that changed *here* while the
job ran (:func:`changed_here`): that one is kept, with one line on stderr.

jq loads this module with ``--stage``: plain classes, no typing at run time.
"""

from __future__ import annotations

from .entry import DIRECTORY, SYMLINK

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
