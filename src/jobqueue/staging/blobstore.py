"""The worker's content-addressed blob cache on disk (the shell of :mod:`.cachepolicy`).

Layout under ``--cache-dir``: ``blobs/ab/abcdef...`` (one file per blob, named
by its hex SHA-256; the 256 subdirectories made once), blobs being received
are ``blobs/ab/.abcdef...-N`` (written, checked against their digest, then
renamed into place, so a blob file is always whole; blobs that came whole with a job
are held in memory until their job has started: :meth:`BlobStore.accept`),
``jobs/`` (the jobs' private directories, on the same file system so that a
copy can be a reflink), ``parked/`` (finished jobs' directories kept for the
next job of their tree, :mod:`.parking`).  One worker process owns a cache directory (a lock
file says so); its jobs share it.  Blob files are read-only and are never
handed to a job: a job gets a copy (:mod:`.materialise`), so writing into a
staged file in place cannot corrupt the cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterable

from .cachepolicy import CachePolicy, Key
from .manifest import DIGEST_SIZE, new_hasher


class CacheBusy(Exception):
    """Another worker process owns this cache directory."""


class BadBlob(Exception):
    """Received bytes do not match the digest they were sent as."""


class BlobStore:
    def __init__(self, directory: str, capacity: int, max_parked: int = 0) -> None:
        self.directory = os.path.abspath(directory)
        self.blobs = os.path.join(self.directory, "blobs")
        self.jobs = os.path.join(self.directory, "jobs")
        for path in (self.directory, self.blobs, self.jobs):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(self.blobs, f"{i:02x}"), mode=0o700, exist_ok=True)
        self._lock = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise CacheBusy(f"cache directory {self.directory} is in use by another worker") from None
        self.policy = CachePolicy(capacity, max_parked)
        #: Blobs taken whole from a message and checked (:meth:`accept`), counted in the cache, whose files
        #: are not written yet: whoever reads a blob looks here first (threads too: they only read it).
        self.unwritten: dict[bytes, bytes] = {}
        #: Called with the owner name of a parked job directory the cache lets go (see .parking).
        self.on_evict: Callable[[str], None] = lambda _name: None
        found: list[tuple[int, bytes, int]] = []
        for sub in os.scandir(self.blobs):
            for blob in os.scandir(sub.path):
                if blob.name.startswith("."):  # half-received by an earlier run
                    os.unlink(blob.path)
                    continue
                try:
                    digest = bytes.fromhex(blob.name)
                    st = blob.stat()
                except (ValueError, OSError):
                    continue
                if len(digest) == DIGEST_SIZE:
                    found.append((st.st_mtime_ns, digest, st.st_size))
        for _mtime, digest, size in sorted(found):  # oldest first: the LRU order of the last run, roughly
            self._drop(self.policy.add(digest, size))

    def close(self) -> None:
        os.close(self._lock)

    def path(self, digest: bytes) -> str:
        name = digest.hex()
        return os.path.join(self.blobs, name[:2], name)

    def has(self, digest: bytes) -> bool:
        return digest in self.policy

    def read(self, digest: bytes) -> bytes:
        """A small blob (a directory) whole."""
        self.policy.use(digest)
        data = self.unwritten.get(digest)
        if data is not None:
            return data
        with open(self.path(digest), "rb") as f:
            return f.read()

    def pin(self, owner: str, digests: Iterable[bytes]) -> None:
        self.policy.pin(owner, digests)

    def unpin(self, owner: str) -> None:
        self._drop(self.policy.unpin(owner))

    def release(self, owner: str, digests: Iterable[bytes]) -> None:
        self._drop(self.policy.release(owner, digests))

    def park(self, owner: str, size: int) -> None:
        """A job directory is parked (see :mod:`.parking`); it may be evicted at once."""
        self._drop(self.policy.park(owner, size))

    def unpark(self, owner: str) -> None:
        self.policy.unpark(owner)

    def writer(self, digest: bytes, size: int) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def accept(self, digest: bytes, data: bytes) -> bool:
        """A blob that came whole (pushed with a job): checked, then in the cache at once but
        held in memory; its file is written later (:meth:`write_unwritten`, off the job's way:
        creating a file costs far more than the job's copy of a small blob from memory).
        False if the bytes are not that blob."""
        if digest in self.policy:
            self.policy.use(digest)
            return True
        hasher = new_hasher()
        hasher.update(data)
        if hasher.digest() != digest:
            return False
        self.unwritten[digest] = data
        self._drop(self.policy.add(digest, len(data)))
        return True

    def write_unwritten(self, blobs: dict[bytes, bytes]) -> list[bytes]:
        """Write these :attr:`unwritten` blobs' files (temporary file, then renamed into place:
        a blob's file is always whole), off the loop; returns those that could not be written.
        Then :meth:`written`, on the loop."""
        failed = []
        for digest, data in blobs.items():
            final = self.path(digest)
            temp = f"{final[:-len(digest.hex())]}.{digest.hex()}-pushed-{os.urandom(4).hex()}"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.replace(temp, final)
            except OSError:
                failed.append(digest)
                try:
                    os.unlink(temp)
                except OSError:
                    pass
        return failed

    def written(self, blobs: Iterable[bytes], failed: Iterable[bytes]) -> None:
        """:meth:`write_unwritten` is done with ``blobs``: their files are there, and no longer
        held in memory; one evicted meanwhile goes (its file came after the eviction); one
        that could not be written is no longer in the cache."""
        failed = set(failed)
        for digest in blobs:
            data = self.unwritten.pop(digest, None)
            if data is not None and digest in failed:
                if not os.path.exists(self.path(digest)):  # (unless it was received meanwhile)
                    self.policy.forget(digest)
            elif data is not None and not os.path.exists(self.path(digest)):
                # evicted while being written, its file removed after the rename, and pushed
                # again since: held once more, written next time
                self.unwritten[digest] = data
            elif digest not in self.policy:
                try:
                    os.unlink(self.path(digest))
                except FileNotFoundError:
                    pass

    def _drop(self, keys: list[Key]) -> None:
        for key in keys:
            if isinstance(key, str):
                self.on_evict(key)
                continue
            self.unwritten.pop(key, None)
            try:
                os.unlink(self.path(key))
            except FileNotFoundError:
                pass

    def _stored(self, digest: bytes, temp: str, size: int) -> None:
        os.replace(temp, self.path(digest))
        self._drop(self.policy.add(digest, size))

    def import_file(self, fd: int, digest: bytes, size: int) -> bool:
        """Copy an open file into the cache as blob ``digest`` (off the loop: the cache's
        bookkeeping follows with :meth:`added`); False unless its bytes are that blob."""
        final = self.path(digest)
        if os.path.exists(final):
            return True
        temp = f"{final[:-len(digest.hex())]}.{digest.hex()}-import-{os.urandom(4).hex()}"
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            hasher, copied = new_hasher(), 0
            while data := os.read(fd, 1 << 20):
                hasher.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
                copied += len(data)
        except OSError:
            os.close(out)
            os.unlink(temp)
            return False
        os.close(out)
        if copied != size or hasher.digest() != digest:
            os.unlink(temp)
            return False
        os.replace(temp, final)
        return True

    def import_bytes(self, digest: bytes, data: bytes) -> None:
        """A small blob (a directory made on the worker) into the cache, off the loop (then :meth:`added`)."""
        final = self.path(digest)
        if not os.path.exists(final):
            temp = f"{final[:-len(digest.hex())]}.{digest.hex()}-import-{os.urandom(4).hex()}"
            with open(temp, "xb") as f:
                f.write(data)
            os.chmod(temp, 0o400)
            os.replace(temp, final)

    def added(self, digest: bytes, size: int) -> None:
        """A blob :meth:`import_file`-d or :meth:`import_bytes`-d is there: it counts now
        (unless it was evicted meanwhile: a blob that was there already may have been)."""
        if digest in self.policy or os.path.exists(self.path(digest)):
            self._drop(self.policy.add(digest, size))

    def remove_workdir(self, path: str) -> None:
        """Remove a job's directory, whatever modes the job left in it."""

        def make_writable(_func: object, where: str, _exc: object) -> None:
            parent = os.path.dirname(where)
            try:
                os.chmod(parent, 0o700)
                os.chmod(where, 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
            if os.path.isdir(where) and not os.path.islink(where):
                shutil.rmtree(where, ignore_errors=True)
            else:
                try:
                    os.unlink(where)
                except OSError:
                    pass

        shutil.rmtree(path, onerror=make_writable)


class BlobWriter:
    """One blob being received in order: bytes go to a temporary file, checked
    against the digest at the end, then renamed into the cache."""

    def __init__(self, store: BlobStore, digest: bytes, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.written = 0
        self._hasher = new_hasher()
        name = digest.hex()
        self._temp = os.path.join(store.blobs, name[:2], f".{name}-{id(self)}")
        self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)

    def write(self, data: bytes | memoryview) -> None:
        if self.written + len(data) > self.size:
            self.abort()
            raise BadBlob(f"blob {self.digest.hex()[:12]} is longer than announced")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._hasher.update(data)
        self.written += len(data)

    def finish(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.written != self.size or self._hasher.digest() != self.digest:
            os.unlink(self._temp)
            raise BadBlob(f"blob {self.digest.hex()[:12]} does not match its digest")
        self.store._stored(self.digest, self._temp, self.size)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
