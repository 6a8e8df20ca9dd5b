"""The worker's half of a staged job (a shell around the pure parts).

Before the job starts (:meth:`WorkerStager.begin`): find what of the tree the
cache lacks (:func:`.manifest.missing`), pin all of it, ask the client for the
missing blobs (Need), store what streams in (Blob, acknowledged by offset),
ask again as directories reveal more, then validate the whole tree and build
the job's private directory (:func:`.materialise.materialise`).  After the job
ended (:meth:`WorkerStager.collect`): compare its directory with the snapshot
(:func:`.fetchplan.diff`), list the changes to the client (Results), stream the
files it wants (ResultData, within the window), and say when all are acknowledged.

The worker's core learns only the outcomes, through the callbacks: staged (with
the directory to run in), failed (with why), results delivered.

Building a job's directory and scanning it afterwards touch every file of the
tree: they run off the worker's loop (``background``: a thread in the worker's
shell), so that heartbeats and other jobs' streams go on meanwhile; their
outcome comes back on the loop, where every callback and message is issued.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p
from .blobstore import BadBlob, BlobStore, BlobWriter
from .fetchplan import Change, diff
from .manifest import BadManifest, Entry, check_tree, missing
from .materialise import final_tree, materialise, open_result
from .paths import UnsafePath, split_path

#: Digests per Need message, and result entries' bytes per Results message (far below MAX_MESSAGE_SIZE).
NEED_BATCH = 4096
RESULTS_BATCH_BYTES = 256 * 1024


class StageFailed(Exception):
    pass


@dataclass
class _Run:
    job_id: str
    attempt: int
    root: bytes
    cwd: bytes  # relative to the tree (empty: its root)
    owner: str
    requested: set[bytes] = field(default_factory=set)
    writer: BlobWriter | None = None
    received: int = 0
    workdir: str = ""
    snapshot: dict[bytes, Entry] = field(default_factory=dict)
    # results
    changes: list[Change] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)
    want_done: bool = False
    sending: tuple[int, int, int] | None = None  # (index, fd, offset in the file)
    sent: int = 0
    acked: int = 0
    delivered: bool = False
    busy: bool = False  # its directory is being built or scanned off the loop
    epoch: int = 0  # restarts of the staging stream (see resume)


class _StoreDirectories(dict[bytes, bytes]):
    """Directory blobs read from the store's files on demand (a Mapping for
    manifest.walk); safe off the loop: the blobs are pinned, nothing else is touched."""

    def __init__(self, store: BlobStore) -> None:
        super().__init__()
        self.store = store

    def __missing__(self, digest: bytes) -> bytes:
        with open(self.store.path(digest), "rb") as f:
            return f.read()


#: Runs ``work`` (off the loop) and then ``done(result or exception)`` on the loop.
Background = Callable[[Callable[[], Any], Callable[[Any], None]], None]


def run_inline(work: Callable[[], Any], done: Callable[[Any], None]) -> None:
    """A :data:`Background` that runs everything at once (tests, tools)."""
    try:
        result = work()
    except Exception as e:
        result = e
    done(result)


class WorkerStager:
    def __init__(
        self,
        store: BlobStore,
        send: Callable[[p.Message], None],
        on_staged: Callable[[str, bytes], None],
        on_failed: Callable[[str, str], None],
        on_delivered: Callable[[str], None],
        keep_workdir: bool = False,
        background: Background = run_inline,
    ) -> None:
        self.store = store
        self.send = send
        self.on_staged = on_staged  # (job_id, directory to run in)
        self.on_failed = on_failed  # (job_id, why)
        self.on_delivered = on_delivered  # (job_id): results all acknowledged
        self.keep_workdir = keep_workdir
        self.background = background
        self.runs: dict[str, _Run] = {}

    # --- staging -----------------------------------------------------------------------

    def begin(self, job_id: str, attempt: int, spec: p.JobSpec) -> None:
        run = _Run(job_id, attempt, spec.stage, spec.cwd, f"{job_id}/{attempt}")
        self.runs[job_id] = run
        try:
            if len(spec.stage) != 32:
                raise StageFailed("the staged tree's digest is malformed")
            if spec.cwd:
                split_path(spec.cwd)
            self._ask(run)
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _ask(self, run: _Run) -> None:
        need, seen = missing(run.root, self.store.has, self.store.read)
        self.store.pin(run.owner, seen)
        if not need:
            self._materialise(run)
            return
        run.requested.update(need)
        for i in range(0, len(need), NEED_BATCH):
            self.send(p.Need(run.job_id, run.attempt, need[i:i + NEED_BATCH], run.epoch))

    def on_blob(self, msg: p.Blob) -> None:
        run = self.runs.get(msg.job_id)
        if (run is None or run.attempt != msg.attempt or run.workdir or msg.epoch != run.epoch
                or msg.offset != run.received):
            return  # another attempt's or stream's, already staged, or a duplicate
        try:
            if run.writer is None:
                if msg.digest not in run.requested:
                    raise StageFailed("the client sent a blob that was not asked for")
                run.writer = self.store.writer(msg.digest, msg.size)
            elif run.writer.digest != msg.digest:
                raise StageFailed("the client switched blobs before the end of one")
            run.writer.write(msg.data)
            run.received += len(msg.data)
            if msg.end:
                writer, run.writer = run.writer, None
                writer.finish()
                run.requested.discard(msg.digest)
            self.send(p.Ack(run.job_id, run.attempt, p.STAGE_IN, run.received))
            if msg.end and not run.requested:
                self._ask(run)  # directories that came may name more
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _materialise(self, run: _Run) -> None:
        store, root, rel = self.store, run.root, run.cwd
        workdir = tempfile.mkdtemp(prefix=f"job-{run.job_id}-", dir=store.jobs)
        run.workdir = workdir  # from now on, blobs that come are ignored and forget() removes it

        def work() -> tuple[dict[bytes, Entry], bytes]:
            snapshot = check_tree(root, _StoreDirectories(store))
            materialise(store, root, workdir)
            cwd = os.fsencode(workdir)
            if rel:  # jq's directory inside DIR: made if git or --exclude left it out
                cwd = os.path.join(cwd, rel)
                if rel not in snapshot:
                    os.makedirs(cwd, exist_ok=True)
            return snapshot, cwd

        def done(result: Any) -> None:
            run.busy = False
            if self.runs.get(run.job_id) is not run:
                self._remove(run)  # forgotten meanwhile: its directory goes now
                return
            if isinstance(result, Exception):
                self._fail(run, result)
                return
            run.snapshot, cwd = result
            self.on_staged(run.job_id, cwd)

        run.busy = True
        self.background(work, done)

    def _fail(self, run: _Run, error: Exception) -> None:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self.forget(run.job_id)
        self.on_failed(run.job_id, f"staging failed: {why}")

    def resume(self, job_id: str) -> None:
        """The server restarted (the client re-attached): what was in flight is lost.
        Staging: a new epoch of the stream, asking again for what is still missing.
        Results: listed and sent again (offsets go on; the client starts over)."""
        run = self.runs.get(job_id)
        if run is None or run.busy:
            return
        if not run.workdir:
            if run.writer is not None:
                run.writer.abort()
                run.writer = None
            run.epoch += 1
            run.received = 0
            run.requested.clear()
            self._ask(run)
        elif run.changes or run.want_done:
            if run.sending is not None and run.sending[1] >= 0:
                os.close(run.sending[1])
            run.sending = None
            run.queue.clear()
            run.want_done = run.delivered = False
            run.acked = run.sent
            self._send_results(run)

    # --- results --------------------------------------------------------------------------

    def collect(self, job_id: str) -> None:
        """The job ended: list its results to the client (the scan runs off the loop)."""
        run = self.runs[job_id]
        workdir, snapshot = run.workdir, run.snapshot

        def done(result: Any) -> None:
            run.busy = False
            if self.runs.get(job_id) is not run:
                self._remove(run)
                return
            if isinstance(result, Exception):  # e.g. the job left a directory unreadable: nothing comes back
                result = []
            run.changes = result
            self._send_results(run)

        run.busy = True
        self.background(lambda: diff(snapshot, final_tree(workdir)), done)

    def _send_results(self, run: _Run) -> None:
        job_id = run.job_id
        batch: list[p.ResultEntry] = []
        size = 0
        for change in run.changes:
            batch.append(p.ResultEntry(change.path, change.kind, change.mode, change.mtime_ns, change.size,
                                       change.target, change.deleted))
            size += len(change.path) + len(change.target) + 32
            if size >= RESULTS_BATCH_BYTES:
                self.send(p.Results(job_id, run.attempt, batch))
                batch, size = [], 0
        self.send(p.Results(job_id, run.attempt, batch, True))

    def on_want(self, msg: p.Want) -> None:
        run = self.runs.get(msg.job_id)
        if run is None or run.attempt != msg.attempt or run.want_done:
            return
        for index in msg.indexes:
            if 0 <= index < len(run.changes) and run.changes[index].kind == 0 and not run.changes[index].deleted:
                run.queue.append(index)
        run.want_done = msg.done
        self._pump(run)

    def on_ack(self, msg: p.Ack) -> None:
        run = self.runs.get(msg.job_id)
        if run is not None and run.attempt == msg.attempt and msg.fd == p.RESULTS:
            run.acked = max(run.acked, msg.offset)
            self._pump(run)

    def _pump(self, run: _Run) -> None:
        while run.sent - run.acked < p.WINDOW:
            if run.sending is None:
                if not run.queue:
                    break
                index = run.queue.popleft()
                try:
                    fd = open_result(run.workdir, run.changes[index].path)
                except OSError:
                    fd = -1  # gone or replaced since it was listed: it ends empty (the client keeps the old one)
                run.sending = (index, fd, 0)
            index, fd, offset = run.sending
            data = os.pread(fd, p.CHUNK_SIZE, offset) if fd >= 0 else b""
            end = len(data) < p.CHUNK_SIZE
            self.send(p.ResultData(run.job_id, run.attempt, run.sent, index, data, end))
            run.sent += len(data)
            if end:
                if fd >= 0:
                    os.close(fd)
                run.sending = None
            else:
                run.sending = (index, fd, offset + len(data))
        if run.want_done and run.sending is None and not run.queue and run.acked >= run.sent and not run.delivered:
            run.delivered = True
            self.on_delivered(run.job_id)

    # --- the end -----------------------------------------------------------------------------

    def forget(self, job_id: str) -> None:
        """The run is over (released, killed, or the worker stops): unpin its
        blobs and remove its directory (unless --keep-workdir)."""
        run = self.runs.pop(job_id, None)
        if run is None:
            return
        if run.writer is not None:
            run.writer.abort()
        if run.sending is not None and run.sending[1] >= 0:
            os.close(run.sending[1])
        self.store.unpin(run.owner)
        if not run.busy:  # else once the work off the loop is done with it
            self._remove(run)

    def _remove(self, run: _Run) -> None:
        """Remove its directory, off the loop (a big tree takes a while)."""
        if run.workdir and not self.keep_workdir:
            workdir, store = run.workdir, self.store
            self.background(lambda: store.remove_workdir(workdir), lambda _: None)
