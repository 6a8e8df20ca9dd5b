"""The client's half of a staged job: it answers the worker's Need with blobs
read from DIR, and writes the results the worker sends back into DIR.

Driven by :class:`jobqueue.client.ClientJob` (which hands it the staging
messages of its job); what it posts goes to the server like the job's other
messages.  Messages are of the job's module (:mod:`jobqueue.wire` for jq,
:mod:`jobqueue.protocol` for the Python API): the same bytes either way.
Blobs and results are streams with offsets and a window of unacknowledged
bytes, like stdin: neither side holds a whole file in memory.
"""

from __future__ import annotations

import os
import stat
from _collections import deque  # (collections itself costs jq 1-3 ms of start-up)

from .. import wire
from .entry import DIRECTORY, FILE, SYMLINK, sha256
from .fetchplan import Change, FetchRules, Selection, changed_here, refused_symlinks, select
from .scan import Snapshot, StageError
from .statcache import record_fetched, stat_key
from .writeback import Parents, Refused, ResultFile, check_writable, delete, lstat_at, make_directory, write_symlink

TYPE_CHECKING = False
if TYPE_CHECKING:  # jq loads this module: no typing at run time
    from collections.abc import Callable
    from typing import Any


#: Result indexes per Want message (at most 9 bytes each: far below the 1 MiB message limit).
WANT_BATCH = 50_000
#: Bytes of files and of directories sent unasked when the worker offers it (Need.push): what this
#: snapshot hashed or encoded anew, the likely missing (a little, lest it be what the worker has).
PUSH_FILES = 256 * 1024
PUSH_DIRECTORIES = 256 * 1024


#: Bytes of files and of directories that changed since the last snapshot sent with the job
#: itself (JobSpec.stage_push; their sum is at most MAX_STAGE_PUSH).
INLINE_FILES = 128 * 1024
INLINE_DIRECTORIES = 128 * 1024


def inline_blobs(snap: Snapshot) -> list[tuple[bytes, bytes]]:
    """(digest, bytes) of what changed since the last snapshot of the tree, a little of it:
    a worker that holds the last snapshot lacks only these, and needs not ask for them."""
    blobs = []
    for digest in snap.changed(INLINE_FILES, INLINE_DIRECTORIES):
        data = snap.directory(digest)
        if data is None:
            found = snap.blob(digest)
            if found is None:
                continue
            try:
                with open(os.path.join(snap.root, found[0]), "rb", buffering=0) as f:
                    data = f.read(found[1] + 1)
            except OSError:
                continue  # gone since: the worker asks, and hears why it cannot be had
            if len(data) != found[1]:
                continue
        blobs.append((digest, data))
    return blobs


class ClientStager:
    def __init__(
        self,
        snapshot: Snapshot,
        rules: FetchRules,
        proto: Any,
        job_id: str,
        post: Callable[[Any], None],
        say: Callable[[str], None],
    ) -> None:
        self.snap = snapshot
        self.rules = rules
        self.p = proto
        self.job_id = job_id
        self.post = post
        self.say = say  # one line for the user (stderr)
        self.failed = ""  # why staging failed (the job is then cancelled)
        self.attempt = 0
        self._matches: Callable[[bytes, bool], bool] | None = None
        if rules.patterns:
            import pathspec

            spec = pathspec.GitIgnoreSpec.from_lines(rules.patterns)
            self._matches = lambda path, is_dir: spec.match_file(os.fsdecode(path) + ("/" if is_dir else ""))
        self._ours: dict[bytes, tuple[int, int, int, int]] = {}  # results we wrote: their stat then
        self._made: list[bytes] = []  # directories the results made
        self._epoch = 0
        self._reset(0)
        # what -v reports (over all attempts)
        self.blobs_sent = 0
        self.bytes_sent = 0
        self.inline_sent = 0  # of them, sent with the job (JobSpec.stage_push)
        self.fetched = 0
        self.fetched_bytes = 0
        self.deleted = 0
        self.kept = 0
        self.refused = 0

    def sent_with_the_job(self, blobs: list[tuple[bytes, bytes]]) -> None:
        self.inline_sent = len(blobs)
        self.blobs_sent += len(blobs)
        self.bytes_sent += sum(len(data) for _digest, data in blobs)

    def _reset(self, attempt: int) -> None:
        """A new attempt (a requeue): it starts from the same snapshot."""
        self.attempt = attempt
        self._reset_upload()
        self._reset_results()

    def _reset_upload(self) -> None:
        self._queue: deque[bytes] = deque()
        self._source: _Source | None = None
        self._sent = 0
        self._acked = 0

    def _reset_results(self) -> None:
        self._changes: list[Change] = []
        self._wanted: dict[int, Change] = {}
        self._received = 0
        self._writing: dict[int, ResultFile | None] = {}  # None: refused, its bytes are dropped
        self._fetch_set: set[Change] = set()

    def _current(self, attempt: int) -> bool:
        if attempt > self.attempt:
            self._close_sources()
            self._epoch = 0
            self._reset(attempt)
        return attempt == self.attempt and not self.failed

    def handle(self, msg: Any) -> None:
        try:
            if isinstance(msg, self.p.Need):
                self._on_need(msg)
            elif isinstance(msg, self.p.Ack):
                if msg.fd == wire.STAGE_IN and msg.attempt == self.attempt:
                    self._acked = min(max(self._acked, msg.offset), self._sent)  # (one of an older epoch)
                    self._pump()
            elif isinstance(msg, self.p.Results):
                self._on_results(msg)
            elif isinstance(msg, self.p.ResultData):
                self._on_result_data(msg)
        except StageError as e:
            self._fail(str(e))
            if isinstance(msg, self.p.ResultData):
                self._drain(msg)

    def _fail(self, why: str) -> None:
        if not self.failed:
            self.failed = why
            self._close_sources()
            self.post(self.p.Signal(self.job_id, 9))  # nothing runs yet: the job ends

    # --- blobs to the worker ------------------------------------------------------------

    def resumed(self, attempt: int) -> None:
        """The job re-attached after a server restart: results in flight are lost;
        the worker lists and sends them again."""
        if attempt == self.attempt and not self.failed:
            for writer in self._writing.values():
                if writer is not None:
                    writer.abort()
            self._reset_results()
            self._received = -1  # the worker's offsets go on: take the next one as it comes

    def _on_need(self, msg: Any) -> None:
        if not self._current(msg.attempt):
            return
        if msg.epoch != self._epoch:  # the worker restarted the stream: what was in flight is lost
            if msg.epoch < self._epoch:
                return
            self._close_sources()
            self._reset_upload()
            self._epoch = msg.epoch
        if getattr(msg, "push", False):  # before what it named: it asks again only once those came
            named = set(msg.digests)
            self._queue.extend(d for d in self.snap.changed(PUSH_FILES, PUSH_DIRECTORIES) if d not in named)
        for digest in msg.digests:
            if self.snap.directory(digest) is None and self.snap.blob(digest) is None:
                raise StageError(f"the worker asked for a blob that is not in the snapshot ({digest.hex()[:12]})")
            self._queue.append(digest)
        self._pump()

    def _pump(self) -> None:
        while self._sent - self._acked < wire.WINDOW:
            if self._source is None:
                if not self._queue:
                    return
                self._source = _Source(self.snap, self._queue.popleft())
            source = self._source
            data = source.read(wire.CHUNK_SIZE)
            end = source.done
            self.post(self.p.Blob(self.job_id, self.attempt, self._sent, source.digest, source.size, data, end,
                                  self._epoch))
            self._sent += len(data)
            self.bytes_sent += len(data)
            if end:
                self.blobs_sent += 1
                source.close()
                self._source = None

    def _close_sources(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    # --- results back ------------------------------------------------------------------------

    def _on_results(self, msg: Any) -> None:
        if not self._current(msg.attempt):
            return
        for e in msg.entries:
            self._changes.append(Change(e.path, e.kind, e.mode, e.mtime_ns, e.size, e.target, e.deleted))
        if not msg.done:
            return
        root = self.snap.root
        parents = Parents(root)  # (each directory opened once for the whole batch of checks)

        def now(rel: bytes) -> tuple[int, int, int, int] | None:
            st = lstat_at(root, rel, parents)
            return None if st is None else stat_key(st)

        if self._changes:  # (the snapshot's stat of every path is made only when something came back)
            before = {**self.snap.local, **self._ours} if self._ours else self.snap.local
            try:
                selection = select(self._changes, self.rules, self._matches, before, now, self.snap.taken_ns)
            finally:
                parents.close()
            self._apply_local(selection)
        for index, change in enumerate(self._changes):
            if change.kind == FILE and not change.deleted and change in self._fetch_set:
                self._wanted[index] = change
        wanted = list(self._wanted)
        for start in range(0, len(wanted), WANT_BATCH):  # each message well under the size limit
            self.post(self.p.Want(self.job_id, self.attempt, wanted[start:start + WANT_BATCH], False))
        self.post(self.p.Want(self.job_id, self.attempt, [], True))

    def _apply_local(self, selection: Selection) -> None:
        """Kept files, deletions, directories and symlinks: everything but file contents."""
        root = self.snap.root
        for path in selection.kept:
            self._keep(path)
        # a symlink may lead out through others (a chain): judged on the tree as it will be
        escaping = refused_symlinks([*selection.fetch, *selection.delete], self._local_link)
        written: list[Change] = []
        unsure = False  # a symlink or deletion failed: the tree is not quite what was judged
        # the files' ways, each directory opened once; a directory is only ever made here,
        # never removed (deletions come after), so what it found stays true
        parents = Parents(root)
        try:
            for change in selection.fetch:
                try:
                    if change.kind == DIRECTORY:
                        make_directory(root, change.path)
                        self._made.append(change.path)
                    elif change.path in escaping:
                        raise Refused(escaping[change.path])
                    elif change.kind == SYMLINK:
                        try:
                            write_symlink(root, change.path, change.target, change.mtime_ns)
                        except (Refused, OSError):
                            unsure = True
                            raise
                        written.append(change)
                        self.fetched += 1
                    else:
                        check_writable(root, change.path, parents)
                        self._fetch_set.add(change)
                except (Refused, OSError) as e:
                    self._refuse(change.path, e)
        finally:
            parents.close()
        for change in selection.delete:
            try:
                delete(root, change.path, change.kind == DIRECTORY)
                self.deleted += 1
            except (Refused, OSError) as e:
                unsure = True
                self._refuse(change.path, e)
        if unsure and written:  # judge what was written again, on the tree as it is
            files = [change for change in selection.fetch if change in self._fetch_set]
            for path, why in refused_symlinks([*written, *files], self._local_link).items():
                try:
                    delete(root, path, False)
                except (Refused, OSError) as e:  # (changed here meanwhile)
                    why += f", and it could not be removed: {e}"
                self.fetched -= 1
                self._refuse(path, Refused(why))

    def _local_link(self, rel: bytes) -> bytes | None:
        """The target of the symlink at ``rel`` under DIR (reached without following one), or None."""
        st = lstat_at(self.snap.root, rel)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return None
        try:
            return os.readlink(os.path.join(self.snap.root, rel))
        except OSError:
            return None

    def _keep(self, path: bytes) -> None:
        self.kept += 1
        self.say(f"jq: kept local {_show(self.snap.root, path)}: changed here while the job ran")

    def _refuse(self, path: bytes, error: Exception) -> None:
        self.refused += 1
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self.say(f"jq: did not bring back {_show(self.snap.root, path)}: {why}")

    def _on_result_data(self, msg: Any) -> None:
        if self.failed:
            self._drain(msg)
            return
        if not self._current(msg.attempt):
            return
        if self._received < 0:
            self._received = msg.offset
        if msg.offset != self._received:
            return  # a duplicate
        change = self._wanted.get(msg.index)
        if change is None:
            raise StageError(f"the worker sent a result that was not asked for (index {msg.index})")
        if msg.index not in self._writing:
            try:
                self._writing[msg.index] = ResultFile(self.snap.root, change.path, change.mode, change.mtime_ns)
            except (Refused, OSError) as e:
                self._writing[msg.index] = None
                self._refuse(change.path, e)
        writer = self._writing[msg.index]
        if writer is not None:
            writer.write(msg.data)
        self._received += len(msg.data)
        if msg.end:
            del self._wanted[msg.index]
            self._writing.pop(msg.index)
            if writer is not None:
                self._commit(writer, change)
        self.post(self.p.Ack(self.job_id, self.attempt, wire.RESULTS, self._received))

    def _drain(self, msg: Any) -> None:
        """Staging failed while results came (the worker broke the protocol): nothing more
        is written, but the bytes are acknowledged, so that the worker's run ends and
        with it the job (jq then says why it failed, 255)."""
        if msg.attempt == self.attempt:
            self._received = max(self._received, msg.offset + len(msg.data))
            self.post(self.p.Ack(self.job_id, self.attempt, wire.RESULTS, self._received))

    def _commit(self, writer: ResultFile, change: Change) -> None:
        # checked again right before the rename: an edit made while the bytes came is kept too
        st = writer.lstat_there()
        before = self._ours.get(change.path, self.snap.local.get(change.path))
        if changed_here(before, None if st is None else stat_key(st), self.snap.taken_ns):
            writer.abort()
            self._keep(change.path)
            return
        try:
            st = writer.commit()
        except OSError as e:
            self._refuse(change.path, e)
            return
        if st is not None:
            self._ours[change.path] = stat_key(st)
        self.fetched += 1
        self.fetched_bytes += change.size

    def close(self) -> None:
        self._close_sources()
        for writer in self._writing.values():
            if writer is not None:
                writer.abort()
        self._writing.clear()
        self.snap.saved()  # the stat cache is written before the process may end
        if (self._ours or self._made) and self.snap.cache_path:
            # the next scan tells what the worker has (the tree as the job left it) from real changes
            record_fetched(self.snap.cache_path, {**dict.fromkeys(self._made), **self._ours})

    def summary_sent(self) -> str:
        s = self.snap
        listed = f"listed {s.relisted} of {len(s.listed)} directories"
        if s.relisted < len(s.listed):
            listed += " (the stage watcher saw no change in the others)"
        inline = f", {self.inline_sent} of them with the job" if self.inline_sent else ""
        return (f"jq: staged {s.files} files ({_size(s.size)}); {listed}, hashed {s.hashed} files; "
                f"sent {self.blobs_sent} blobs ({_size(self.bytes_sent)}){inline}; the rest was on the worker "
                "already")

    def summary_fetched(self) -> str:
        return (f"jq: brought back {self.fetched} files ({_size(self.fetched_bytes)}), deleted {self.deleted}, "
                f"kept {self.kept} local")


class _Source:
    """A blob being sent: a directory's encoding, or a file read in chunks and
    hashed as it goes (a file changed since the snapshot is an error)."""

    def __init__(self, snap: Snapshot, digest: bytes) -> None:
        self.digest = digest
        self.done = False
        self._fd = -1
        self._data: bytes | None = snap.directory(digest)
        self._offset = 0
        if self._data is not None:
            self.size = len(self._data)
            return
        blob = snap.blob(digest)
        assert blob is not None  # (asked for only when the snapshot has it)
        rel, self.size = blob
        self.path = os.path.join(snap.root, rel)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise StageError(f"cannot read {os.fsdecode(self.path)}: {e.strerror}") from None
        self._hasher = sha256()

    def read(self, n: int) -> bytes:
        if self._data is not None:
            data = self._data[self._offset:self._offset + n]
        else:
            try:
                data = os.pread(self._fd, min(n, self.size - self._offset), self._offset)
            except OSError as e:
                raise StageError(f"cannot read {os.fsdecode(self.path)}: {e.strerror}") from None
            self._hasher.update(data)
            if len(data) < min(n, self.size - self._offset):
                raise StageError(f"{os.fsdecode(self.path)} changed while it was being staged")
        self._offset += len(data)
        if self._offset >= self.size:
            self.done = True
            if self._data is None and self._hasher.digest() != self.digest:
                raise StageError(f"{os.fsdecode(self.path)} changed while it was being staged")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _show(root: bytes, path: bytes) -> str:
    """A local path for a message: as it is, or quoted when that would not print on one
    line (a newline, a control character or undecodable bytes in a name)."""
    text = os.fsdecode(os.path.join(root, path))
    return text if text.isprintable() else repr(text)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"
