"""The stat cache's file format (pure: bytes in, what they hold out): a base of every
directory's cache entry, then a journal of deltas appended after it.

Rewriting the whole file (~1 MB for 10,000 files) after a one-file change cost jq
2-3 ms (the encoding, and the replace of the old file), more than the rest of the
change; a delta (the directories that changed) is a few kilobytes, appended with one
``write`` on an ``O_APPEND`` descriptor.  Once the journal has grown past a quarter of
the base, the next save writes the whole file again (a *compaction*: temporary file,
then rename, as before).

Layout::

    MAGIC, base length (4 bytes), base = marshal (root, entries, watch)
    then records: payload length (4 bytes), CRC-32 of the payload (4 bytes),
                  payload = marshal (loaded_end, changed entries, removed paths, watch)

The base is written whole and renamed into place, so it is not checksummed (a CRC of
1 MB costs 0.4 ms on every load); a record is appended in place, and a torn one (a
crash mid-write) fails its length or CRC: reading stops there, and the next save
compacts (an append after a torn record would be lost behind it).

**Concurrent writers.**  Each jq process that saves appends to the file *it loaded*
(the descriptor opened for reading; after a compaction by another process its append
lands in the replaced file and is lost: only a cache).  A record names ``loaded_end``,
the offset up to which its writer had read.  A record found at that very offset was
written by a scan that saw everything before it: its watcher token (see
:mod:`.watchclient`) replaces the one before.  A record found further on raced with
the records in between: each directory takes the later memo, but a memo from a
concurrent record may be older than the later record's token (a directory changed
and changed back between the two scans would look unchanged since that token, and
keep the older, wrong memo), so the token becomes the earlier of the two: every
memo kept is then as new as the token, and the next scan re-lists whatever changed
since (or everything, when the tokens cannot be compared).

jq loads this module for ``--stage``: only what the interpreter has at hand.
"""

from __future__ import annotations

import marshal
from binascii import crc32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"jqstat\x00\x05"
_HEAD = len(MAGIC) + 4
_RECORD_HEAD = 8
#: A save appends while the journal stays within this share of the base's size (every load
#: reads the journal: ~0.9 ms per MB of it here, against 2-3 ms per MB of base for a
#: compaction: a quarter costs least over a run of changes)...
JOURNAL_SHARE = 0.25
#: ...and holds fewer records than this (each costs a little on every load).
MAX_RECORDS = 64


class Loaded:
    """What a stat cache file holds: the entries (relative path -> cache entry), the
    watch state ``(token, view)`` (or None), and where its writer may append."""

    __slots__ = ("entries", "watch", "end", "clean", "base_size", "records")

    def __init__(self, entries: dict, watch: Any, end: int, clean: bool, base_size: int, records: int) -> None:
        self.entries = entries
        self.watch = watch
        self.end = end  # offset after the last whole record: a delta based on this state says so
        self.clean = clean  # False: a torn or unreadable record ends the file (the next save compacts)
        self.base_size = base_size
        self.records = records


def encode_base(root: bytes, entries: dict, watch: Any) -> bytes:
    """A whole stat cache file (a base and no journal)."""
    base = marshal.dumps((root, entries, watch))
    return MAGIC + len(base).to_bytes(4, "little") + base


def encode_delta(loaded_end: int, changed: dict, removed: list, watch: Any) -> bytes:
    """One journal record: what a scan that read the file up to ``loaded_end`` changed."""
    payload = marshal.dumps((loaded_end, changed, removed, watch))
    return len(payload).to_bytes(4, "little") + crc32(payload).to_bytes(4, "little") + payload


def decode(data: bytes, root: bytes) -> Loaded | None:
    """The state ``data`` holds (None: not a stat cache of ``root`` in this format)."""
    if len(data) < _HEAD or data[: len(MAGIC)] != MAGIC:
        return None
    view = memoryview(data)
    end = _HEAD + int.from_bytes(data[len(MAGIC):_HEAD], "little")
    if end > len(data):
        return None  # (the base is renamed into place whole: this file was damaged)
    try:
        base = marshal.loads(view[_HEAD:end])
    except (EOFError, ValueError, TypeError):
        return None
    if type(base) is not tuple or len(base) != 3 or base[0] != root or type(base[1]) is not dict:
        return None
    entries, watch = base[1], base[2]
    loaded = Loaded(entries, watch, end, True, end, 0)
    while end < len(data):
        record = _record(data, view, end)
        if record is None:
            loaded.clean = False
            break
        size, (based_on, changed, removed, their_watch) = record
        entries.update(changed)
        for rel in removed:
            entries.pop(rel, None)
        watch = their_watch if based_on == end else earlier_watch(watch, their_watch)
        end += size
        loaded.records += 1
    loaded.watch, loaded.end = watch, end
    return loaded


def _record(data: bytes, view: memoryview, at: int) -> tuple[int, tuple] | None:
    """(Its size, its payload) of the record at ``at``; None when it is torn or not one."""
    if at + _RECORD_HEAD > len(data):
        return None
    length = int.from_bytes(data[at:at + 4], "little")
    start = at + _RECORD_HEAD
    if start + length > len(data) or crc32(view[start:start + length]) != int.from_bytes(data[at + 4:start], "little"):
        return None
    try:
        payload = marshal.loads(view[start:start + length])
    except (EOFError, ValueError, TypeError):
        return None
    if type(payload) is not tuple or len(payload) != 4 or type(payload[0]) is not int \
            or type(payload[1]) is not dict or type(payload[2]) is not list:
        return None
    return _RECORD_HEAD + length, payload


def earlier_watch(ours: Any, theirs: Any) -> Any:
    """The watch state that holds for the memos of two racing scans: the earlier token of
    the same watcher and view; None (list everything) when they cannot be compared."""
    try:
        if ours is None or theirs is None or ours[1] != theirs[1] or ours[0][0] != theirs[0][0]:
            return None
        return ours if ours[0][1] <= theirs[0][1] else theirs
    except (TypeError, IndexError):
        return None  # (not a watch state)


def should_append(loaded: Loaded | None, record_size: int) -> bool:
    """Whether a save appends ``record_size`` bytes of delta (True) or compacts: write the
    whole file again when there is none, it ends in a torn record, or its journal would
    outgrow its share of the base."""
    if loaded is None or not loaded.clean or loaded.records + 1 >= MAX_RECORDS:
        return False
    return loaded.end - loaded.base_size + record_size <= loaded.base_size * JOURNAL_SHARE
