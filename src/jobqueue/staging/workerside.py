"""The worker's half of a staged job (a shell around the pure parts).

Before the job starts (:meth:`WorkerStager.begin`): take the blobs that came
with the job (held in memory, their files in the cache written once the job has
started: creating files is most of what a small change costs), find what of the
tree the cache lacks (:func:`.manifest.missing`; subtrees a job directory of the
worker holds are not even looked into), pin it, ask the client for the missing
blobs (Need), store what streams in (Blob, acknowledged by offset), ask again as
directories reveal more.  Then take a parked job directory holding the tree
or a similar one (:mod:`.parking`), or a fresh one, and turn it into the
job's tree (:func:`.dirplan.transform`: only what differs).  After the job
ended (:meth:`WorkerStager.collect`): list the directory and compare it with
the tree (:func:`.dirplan.results`), list the changes to the client (Results),
stream the files it wants (ResultData, within the window), and say when all
are acknowledged.  Once the run is forgotten its directory is parked for the
next job (brought back to its tree), or discarded.

The worker's core learns only the outcomes, through the callbacks: staged (with
the directory to run in), failed (with why), results delivered.

Building a job's directory and scanning it afterwards touch every file of the
tree: they run off the worker's loop (``background``: a thread in the worker's
shell), so that heartbeats and other jobs' streams go on meanwhile; their
outcome comes back on the loop, where every callback and message is issued.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p
from .blobstore import BadBlob, BlobStore, BlobWriter
from .dirplan import Seen
from .fetchplan import Change
from .manifest import BadManifest, missing, missing_below, new_hasher
from .materialise import open_result
from .parking import Background, Workdir, Workdirs
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
    pushing: bool = False  # a Need offered the client to send more than it names (until those named came)
    writer: BlobWriter | None = None
    received: int = 0
    workdir: str = ""  # once set, its directory is being made (blobs that come are ignored)
    dir: Workdir | None = None  # its job directory (claimed, being made, or its own)
    chosen: bool = False  # a parked directory was looked for (dir: the one taken, if any)
    prepared: bool = False  # its directory holds its tree (and the job may change it)
    fresh_only: bool = False  # a parked one failed to be turned into its tree: a fresh one now
    complete: bool = True  # the scan after the job could read all of its directory
    seen_after: dict[bytes, Seen] = field(default_factory=dict)  # the changed files' stat when listed
    hashed: dict[int, bytes] = field(default_factory=dict)  # result index -> digest of the bytes sent
    # results
    changes: list[Change] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)
    want_done: bool = False
    sending: tuple[int, int, int, Any] | None = None  # (index, fd, offset in the file, hasher)
    sent: int = 0
    acked: int = 0
    delivered: bool = False
    busy: bool = False  # its directory is being built or scanned off the loop
    epoch: int = 0  # restarts of the staging stream (see resume)


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
        log: Callable[..., None] = lambda event, **fields: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.send = send
        self.on_staged = on_staged  # (job_id, directory to run in)
        self.on_failed = on_failed  # (job_id, why)
        self.on_delivered = on_delivered  # (job_id): results all acknowledged
        self.keep_workdir = keep_workdir
        self.background = background
        self.stopping = stopping  # the worker is stopping: directories are not parked
        self.dirs = Workdirs(store, background, log, keep=keep_workdir)
        self.runs: dict[str, _Run] = {}
        self._writing = False  # the cache's unwritten blobs are being written (off the loop)

    # --- staging -----------------------------------------------------------------------

    def begin(self, job_id: str, attempt: int, spec: p.JobSpec) -> None:
        run = _Run(job_id, attempt, spec.stage, spec.cwd, f"{job_id}/{attempt}")
        self.runs[job_id] = run
        try:
            if len(spec.stage) != 32:
                raise StageFailed("the staged tree's digest is malformed")
            if spec.cwd:
                split_path(spec.cwd)
            self._take_pushed(spec.stage_push)
            self._ask(run)
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _take_pushed(self, blobs: list[tuple[bytes, bytes]]) -> None:
        """Blobs the client sent with the job (what changed since its last snapshot) into the
        cache, their files written once the job has started (:meth:`_write_unwritten`); one
        that does not match its digest (its file changed since it was hashed) is left out,
        and asked for if it is needed."""
        for digest, data in blobs:
            self.store.accept(digest, data)

    def _write_unwritten(self) -> None:
        """Write the files of the blobs that came with jobs, off the loop, once a job has
        started or failed (not on the way of one being staged)."""
        store = self.store
        if self._writing or not store.unwritten:
            return
        blobs = dict(store.unwritten)
        self._writing = True

        def done(result: list[bytes] | Exception) -> None:
            self._writing = False
            store.written(blobs, list(blobs) if isinstance(result, Exception) else result)
            self._write_unwritten()  # those that came meanwhile

        self.background(lambda: store.write_unwritten(blobs), done)

    def _ask(self, run: _Run) -> None:
        """Ask for what is missing, then take a directory and make it hold the tree.  First
        without looking into subtrees any directory of ours holds (so that a parked one can
        be chosen by comparing trees), then as the chosen one holds it (what it lacks is
        this run's to pin)."""
        store = self.store
        have = store.policy.__contains__  # (store.has, one call less for each blob looked at)
        roots, looked = [run.root], set()
        if not run.chosen:
            if not run.fresh_only and self.dirs.parking() and not self.dirs.known(run.root):
                # a directory being parked may keep what its job brought back: the client's tree now, maybe
                self.dirs.after_parking(lambda: self._again(run))
                return
            skipped: list[bytes] = []
            need, seen = missing(run.root, have, self.dirs.directory,
                                 None if run.fresh_only else self.dirs.knows(), skipped)
            store.pin(run.owner, seen)
            if need:
                self._need(run, need)
                return
            run.chosen = True
            if not run.fresh_only:
                run.dir = self.dirs.claim(run.root)
            roots, looked = skipped, seen  # the walk goes on only into what the chosen one does not hold
        held = run.dir.state.digests.__contains__ if run.dir is not None else None
        need, seen = missing_below(roots, looked, have, self.dirs.directory, held)
        store.pin(run.owner, seen)
        if need:
            self._need(run, need)
            return
        if run.dir is not None and run.dir.status == "parking":  # being brought back: it will not be long
            self.dirs.wait(run.dir, lambda workdir: self._parked(run, workdir))
            return
        self._prepare(run)

    def _again(self, run: _Run) -> None:
        """Ask again, after a wait (unless the run is gone, or staged meanwhile)."""
        if self.runs.get(run.job_id) is not run or run.workdir or run.busy:
            return
        try:
            self._ask(run)
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _parked(self, run: _Run, workdir: Workdir | None) -> None:
        """The directory ``run`` waited for is parked (None: it was discarded instead)."""
        if self.runs.get(run.job_id) is not run:
            if workdir is not None:
                self.dirs.release(workdir, True)
            return
        run.dir = workdir
        try:
            self._ask(run)
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _need(self, run: _Run, need: list[bytes]) -> None:
        push = not run.requested and need == [run.root]  # the first ask: the client may send what changed with it
        run.pushing = run.pushing or push
        run.requested.update(need)
        for i in range(0, len(need), NEED_BATCH):
            self.send(p.Need(run.job_id, run.attempt, need[i:i + NEED_BATCH], run.epoch, push))

    def on_blob(self, msg: p.Blob) -> None:
        run = self.runs.get(msg.job_id)
        if (run is None or run.attempt != msg.attempt or run.workdir or msg.epoch != run.epoch
                or msg.offset != run.received):
            return  # another attempt's or stream's, already staged, or a duplicate
        try:
            if run.writer is None:
                if msg.digest not in run.requested and not run.pushing:
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
                run.pushing = False  # what the client pushed came before what was named
                self._ask(run)  # directories that came may name more
        except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
            self._fail(run, e)

    def _prepare(self, run: _Run) -> None:
        run.workdir = "-"  # from now on, blobs that come are ignored; forget() leaves the directory to done()
        reused = run.dir is not None

        def done(workdir: Workdir, result: bytes | Exception) -> None:
            run.busy = False
            run.dir = workdir
            if isinstance(result, Exception):
                self.dirs.discard(workdir, f"could not be made: {result}")
                run.dir = None
                if self.runs.get(run.job_id) is not run:
                    return
                if reused and not isinstance(result, BadManifest):  # a parked one let us down: a fresh one
                    run.workdir, run.chosen, run.fresh_only = "", False, True
                    try:
                        self._ask(run)
                    except (StageFailed, BadManifest, UnsafePath, BadBlob, OSError) as e:
                        self._fail(run, e)
                    return
                self._fail(run, result)
                return
            run.workdir, run.prepared = workdir.path, True
            if self.runs.get(run.job_id) is not run:
                self._release(run)  # forgotten meanwhile
                return
            self.on_staged(run.job_id, result)
            self._write_unwritten()  # the job has started: now the blobs that came with it

        run.busy = True
        self.dirs.prepare(run.dir, run.root, run.job_id, run.cwd, done)

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
            run.pushing = False
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
        workdir, dirs = run.dir, self.dirs
        assert workdir is not None

        def work() -> tuple[list[Change], bool, dict[bytes, Seen]]:
            return dirs.results(workdir)

        def done(result: Any) -> None:
            run.busy = False
            if self.runs.get(job_id) is not run:
                self._release(run)
                return
            if isinstance(result, Exception):  # e.g. the job removed its directory: nothing comes back
                result = [], False, {}
            run.changes, run.complete, run.seen_after = result
            self._send_results(run)

        run.busy = True
        self.background(work, done)

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
                run.sending = (index, fd, 0, new_hasher())
            index, fd, offset, hasher = run.sending
            data = os.pread(fd, p.CHUNK_SIZE, offset) if fd >= 0 else b""
            hasher.update(data)  # what the client now holds, so that the directory may keep it (see parking)
            end = len(data) < p.CHUNK_SIZE
            self.send(p.ResultData(run.job_id, run.attempt, run.sent, index, data, end))
            run.sent += len(data)
            if end:
                if fd >= 0:
                    os.close(fd)
                    if offset + len(data) == run.changes[index].size:
                        run.hashed[index] = hasher.digest()
                run.sending = None
            else:
                run.sending = (index, fd, offset + len(data), hasher)
        if run.want_done and run.sending is None and not run.queue and run.acked >= run.sent and not run.delivered:
            run.delivered = True
            self.on_delivered(run.job_id)

    # --- the end -----------------------------------------------------------------------------

    def forget(self, job_id: str) -> None:
        """The run is over (released, killed, or the worker stops): unpin its
        blobs and park its directory for the next job (or discard it)."""
        run = self.runs.pop(job_id, None)
        if run is None:
            return
        if run.writer is not None:
            run.writer.abort()
        if run.sending is not None and run.sending[1] >= 0:
            os.close(run.sending[1])
        self.store.unpin(run.owner)
        if not run.busy:  # else once the work off the loop is done with it
            self._release(run)
        self._write_unwritten()

    def _release(self, run: _Run) -> None:
        workdir, run.dir = run.dir, None
        if workdir is None:
            return
        if self.stopping():
            self.dirs.discard(workdir, "the worker is stopping")
            return
        kept: dict[bytes, tuple[bytes, Seen]] = {}  # files the client took back: the directory may keep them
        if run.delivered:
            for index, digest in run.hashed.items():
                seen = run.seen_after.get(run.changes[index].path)
                if seen is not None:
                    kept[run.changes[index].path] = (digest, seen)
        self.dirs.release(workdir, run.prepared and run.complete,
                          "a part of it could not be read" if not run.complete else "", kept)
