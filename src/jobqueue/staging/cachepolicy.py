"""The worker's blob cache decisions, pure: which blobs to evict, and which never to.

The cache is bounded (``--cache-size``) and evicts the least recently used
blobs first, but never one that a queued or running job still needs: a job
*pins* its blobs before it asks for the missing ones (Bazel users know the
"missing digest" failure of caches that evict inputs of a running action).
When pinned blobs alone exceed the bound the cache grows past it: a job never
fails for lack of cache room, and the excess goes once the job unpins.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable


class CachePolicy:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._sizes: OrderedDict[bytes, int] = OrderedDict()  # least recently used first
        self.total = 0
        self._pins: dict[str, set[bytes]] = {}
        self._pinned: Counter[bytes] = Counter()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def size_of(self, digest: bytes) -> int | None:
        return self._sizes.get(digest)

    def is_pinned(self, digest: bytes) -> bool:
        return self._pinned[digest] > 0

    def use(self, digest: bytes) -> None:
        """A blob was read: it becomes the most recently used."""
        if digest in self._sizes:
            self._sizes.move_to_end(digest)

    def add(self, digest: bytes, size: int) -> list[bytes]:
        """A blob is stored (most recently used); returns the blobs to evict now."""
        if digest in self._sizes:
            self._sizes.move_to_end(digest)
            return []
        self._sizes[digest] = size
        self.total += size
        return self.evictions()

    def forget(self, digest: bytes) -> None:
        """A blob is gone (its file vanished, or failed a check)."""
        size = self._sizes.pop(digest, None)
        if size is not None:
            self.total -= size

    def pin(self, owner: str, digests: Iterable[bytes]) -> None:
        """``owner`` (a job attempt) needs ``digests`` (present or still to come)
        until :meth:`unpin`; pinning again adds to its set."""
        mine = self._pins.setdefault(owner, set())
        for digest in digests:
            if digest not in mine:
                mine.add(digest)
                self._pinned[digest] += 1
            if digest in self._sizes:  # needed again: the most recently used, pinned anew or not
                self._sizes.move_to_end(digest)

    def unpin(self, owner: str) -> list[bytes]:
        """``owner`` no longer needs its blobs; returns the blobs to evict now."""
        for digest in self._pins.pop(owner, ()):
            self._pinned[digest] -= 1
            if self._pinned[digest] <= 0:
                del self._pinned[digest]
        return self.evictions()

    def evictions(self) -> list[bytes]:
        """Least recently used unpinned blobs to drop until the total fits the bound."""
        evict: list[bytes] = []
        if self.total <= self.capacity:
            return evict
        for digest, size in self._sizes.items():
            if self.total <= self.capacity:
                break
            if self._pinned[digest] <= 0:
                evict.append(digest)
                self.total -= size
        for digest in evict:
            del self._sizes[digest]
        return evict
