"""The worker's cache decisions, pure: which blobs and parked directories to evict, and which never to.

The cache is bounded (``--cache-size``) and evicts the least recently used
blobs first, but never one that a queued or running job still needs: a job
*pins* its blobs before it asks for the missing ones (Bazel users know the
"missing digest" failure of caches that evict inputs of a running action).
When pinned blobs alone exceed the bound the cache grows past it: a job never
fails for lack of cache room, and the excess goes once the job unpins.

A job's directory kept for the next job of its tree (*parked*, see
:mod:`.dirplan`) is an item of the same LRU order, counted with the bytes of its
files, and keeps the blobs of its tree pinned (under its own owner name):
evicting it unpins them, so that they can go in turn.  At most ``max_parked``
directories are parked; beyond, the least recently used goes.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

#: An item of the cache: a blob (its digest) or a parked directory (its owner name).
Key = bytes | str


class CachePolicy:
    def __init__(self, capacity: int, max_parked: int = 0) -> None:
        self.capacity = capacity
        self.max_parked = max_parked
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # least recently used first
        self.total = 0
        self.parked = 0  # parked directories among the items
        self._pins: dict[str, set[bytes]] = {}
        self._pinned: Counter[bytes] = Counter()
        self.pinned_bytes = 0  # of the blobs held that are pinned

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._sizes

    def __len__(self) -> int:
        """Blobs held."""
        return len(self._sizes) - self.parked

    def size_of(self, digest: bytes) -> int | None:
        return self._sizes.get(digest)

    def is_pinned(self, digest: bytes) -> bool:
        return self._pinned[digest] > 0

    def pinned_by(self, owner: str) -> set[bytes]:
        return set(self._pins.get(owner, ()))

    def use(self, digest: bytes) -> None:
        """A blob was read: it becomes the most recently used."""
        if digest in self._sizes:
            self._sizes.move_to_end(digest)

    def add(self, digest: bytes, size: int) -> list[Key]:
        """A blob is stored (most recently used); returns what to evict now."""
        if digest in self._sizes:
            self._sizes.move_to_end(digest)
            return []
        self._sizes[digest] = size
        self.total += size
        if self._pinned[digest] > 0:
            self.pinned_bytes += size
        return self.evictions()

    def forget(self, digest: bytes) -> None:
        """A blob is gone (its file vanished, or failed a check)."""
        size = self._sizes.pop(digest, None)
        if size is not None:
            self.total -= size
            if self._pinned[digest] > 0:
                self.pinned_bytes -= size

    def pin(self, owner: str, digests: Iterable[bytes]) -> None:
        """``owner`` (a job attempt, or a job directory) needs ``digests`` (present
        or still to come) until :meth:`unpin`; pinning again adds to its set."""
        mine = self._pins.setdefault(owner, set())
        for digest in digests:
            if digest not in mine:
                mine.add(digest)
                self._pinned[digest] += 1
                if self._pinned[digest] == 1 and digest in self._sizes:
                    self.pinned_bytes += self._sizes[digest]
            if digest in self._sizes:  # needed again: the most recently used, pinned anew or not
                self._sizes.move_to_end(digest)

    def release(self, owner: str, digests: Iterable[bytes]) -> list[Key]:
        """``owner`` no longer needs these of its pinned ``digests``; returns what to evict now."""
        mine = self._pins.get(owner)
        if mine is not None:
            for digest in digests:
                if digest in mine:
                    mine.discard(digest)
                    self._unpin_one(digest)
        return self.evictions()

    def unpin(self, owner: str) -> list[Key]:
        """``owner`` no longer needs its blobs; returns what to evict now."""
        self._unpin_owner(owner)
        return self.evictions()

    def park(self, owner: str, size: int) -> list[Key]:
        """The directory of ``owner`` is parked: the most recently used item, of ``size``
        bytes, keeping its pins until it is evicted or :meth:`unpark`-ed.  Returns what
        to evict now: the directory itself when it cannot fit next to the pinned blobs
        (its own among them), rather than blobs that would go for nothing."""
        before = self._sizes.get(owner)
        if before is None:
            self.parked += 1
            before = 0
        self.total += size - before  # (parked again: its size may have changed)
        self._sizes[owner] = size
        self._sizes.move_to_end(owner)
        if self.pinned_bytes + size > self.capacity:
            evict: list[Key] = []
            self._evict(owner, evict)
            return evict + self.evictions()
        return self.evictions()

    def unpark(self, owner: str) -> None:
        """The directory was taken by a job, or discarded: no longer an item (its pins stay with ``owner``)."""
        size = self._sizes.pop(owner, None)
        if size is not None:
            self.total -= size
            self.parked -= 1

    def evictions(self) -> list[Key]:
        """Least recently used unpinned blobs and parked directories to drop until the
        total fits the bound (and the parked directories their number)."""
        evict: list[Key] = []
        while self.parked > self.max_parked:
            self._evict(next(key for key in self._sizes if isinstance(key, str)), evict)
        while self.total > self.capacity:
            over = self.total - self.capacity
            victims: list[Key] = []
            for key, size in self._sizes.items():
                if over <= 0:
                    break
                if isinstance(key, str):  # a directory: once it goes its blobs may too, look again from the oldest
                    victims.append(key)
                    break
                if self._pinned[key] <= 0:
                    victims.append(key)
                    over -= size
            if not victims:
                break
            for key in victims:
                self._evict(key, evict)
        return evict

    def _evict(self, key: Key, out: list[Key]) -> None:
        self.total -= self._sizes.pop(key)
        out.append(key)
        if isinstance(key, str):
            self.parked -= 1
            self._unpin_owner(key)

    def _unpin_owner(self, owner: str) -> None:
        for digest in self._pins.pop(owner, ()):
            self._unpin_one(digest)

    def _unpin_one(self, digest: bytes) -> None:
        self._pinned[digest] -= 1
        if self._pinned[digest] <= 0:
            del self._pinned[digest]
            size = self._sizes.get(digest)
            if size is not None:
                self.pinned_bytes -= size
