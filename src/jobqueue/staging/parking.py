"""The worker's job directories, kept from one staged job to the next (a shell around :mod:`.dirplan`).

A job's directory is a :class:`Workdir`: the directory on disk and its
:class:`.dirplan.TreeState`.  Its life:

- *building*/*active*: a job holds it; before the job starts it is turned into
  the job's tree (:meth:`Workdirs.prepare`: a fresh directory, or a parked one
  renamed to the job's name and changed by a Merkle diff);
- *parking*: the job is over and its results are with the client: it is
  renamed under ``parked/`` (no path the job knew leads to it any more),
  discarded if any process still holds it (:mod:`.holders`), else brought back
  to its tree (:func:`.dirplan.restore`): only what the job touched, as the
  inotify watches tell (:mod:`.watch`; a full listing where events were lost).
  The files the client took back are kept as the job left them
  (:func:`.dirplan.adopt`, copied into the cache too): the client's next tree
  holds them.  All of it off the worker's loop;
- *parked*: ready for the next job of its tree (or of a similar one,
  :func:`.dirplan.choose`), an item of the cache's LRU order
  (:mod:`.cachepolicy`) that keeps its blobs pinned; any change to it now
  (the watches see it) and it is discarded rather than reused;
- discarded (removed) when it cannot be trusted: an error on the way, a
  process still in it, a part it cannot read, a change while parked, the
  worker stopping; evicted like a blob; ``--keep-workdir`` leaves it as the
  job left it, unparked.  A worker that starts removes what an earlier run
  left parked: nothing remembers its state.

Everything here runs on the worker's loop except the work handed to
``background``, which touches only the directory it was given.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from .afterjob import adopt, restore, results, scope_of
from .blobstore import BlobStore
from .dirplan import (
    DIRECTORY,
    MakeDir,
    Plan,
    Seen,
    TreeState,
    choose,
    transform,
)
from .fetchplan import Change
from .holders import holders
from .manifest import FILE, MODE_MASK, SYMLINK, BadManifest, Directory, Entry, make_directory
from .materialise import StoreDirectories, apply, look, open_result, scan
from .paths import UnsafePath, check_symlink_target
from .watch import Tracker, Watcher, watcher

#: Runs ``work`` (off the loop) and then ``done(result or exception)`` on the loop.
Background = Callable[[Callable[[], Any], Callable[[Any], None]], None]
#: (event, fields) for the worker's log.
Log = Callable[..., None]


class Unusable(Exception):
    """A parked directory that cannot be trusted: it is discarded."""


class Workdir:
    """One job directory on disk and what the worker knows of it."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name  # its owner name: its pins and its place in the cache's LRU order
        self.path = path  # where it is now
        self.state = TreeState()
        #: building (being made or changed for a job), active (a job's), parking, parked,
        #: claimed (a job took it, not yet changed), discarded
        self.status = "building"
        self.waiter: Callable[[Workdir | None], None] | None = None  # the job waiting for it to be parked
        self.evicted = False  # the cache let it go while it was being parked
        self.tracker = Tracker()  # what changed in it (lost: list it whole)


class Workdirs:
    def __init__(self, store: BlobStore, background: Background, log: Log, keep: bool = False) -> None:
        self.store = store
        self.background = background
        self.log = log
        self.keep = keep  # --keep-workdir: nothing is parked, every job's directory stays
        self.parked_dir = os.path.join(store.directory, "parked")
        self.all: dict[str, Workdir] = {}
        self.directories = StoreDirectories(store)  # decoded and validated once, for all
        self.watcher: Watcher | None = watcher()
        self._after_parking: list[Callable[[], None]] = []
        store.on_evict = self._evicted
        self._clear_leftovers()

    # --- which directory ---------------------------------------------------------------------------------

    def directory(self, digest: bytes) -> Directory:
        """A directory blob of the store, validated (for :func:`.manifest.missing`)."""
        self.store.policy.use(digest)
        return self.directories(digest)

    def known(self, digest: bytes) -> bool:
        """Whether a directory of ours holds the subtree ``digest`` (its blobs pinned)."""
        return any(digest in workdir.state.digests for workdir in self.all.values())

    def knows(self) -> Callable[[bytes], bool]:
        """:meth:`known` as a function for one walk (the directories do not change during it)."""
        if len(self.all) == 1:
            return next(iter(self.all.values())).state.digests.__contains__
        return self.known

    def claim(self, root: bytes) -> Workdir | None:
        """A parked (or parking) directory to turn into the tree ``root``, now the caller's
        (status claimed, or parking: :meth:`wait` for it); None: build a fresh one."""
        ready = [(w, w.state) for w in self.all.values() if w.status == "parked"]
        coming = [(w, w.state) for w in self.all.values() if w.status == "parking" and not w.evicted
                  and w.waiter is None]
        chosen = choose(root, ready + coming, self.directories.get)
        if chosen is not None:
            self.store.unpark(chosen.name)
            if chosen.status == "parked":
                chosen.status = "claimed"
        return chosen

    def parking(self) -> bool:
        """Whether a directory is being parked (it may then hold a tree it did not hold before)."""
        return any(workdir.status == "parking" for workdir in self.all.values())

    def after_parking(self, then: Callable[[], None]) -> None:
        """``then()`` once the directory being parked now is (or the next one to finish)."""
        self._after_parking.append(then)

    def wait(self, workdir: Workdir, then: Callable[[Workdir | None], None]) -> None:
        """``then(workdir)`` once it is parked (and claimed), or ``then(None)`` if it was discarded."""
        assert workdir.status == "parking"
        workdir.waiter = then

    # --- before the job ---------------------------------------------------------------------------------------

    def prepare(self, workdir: Workdir | None, root: bytes, job_id: str, rel: bytes,
                done: Callable[[Workdir, bytes | Exception], None]) -> Workdir:
        """Turn ``workdir`` (claimed; None: a fresh one) into a directory holding ``root``
        under the jobs' directory; ``done(workdir, the directory to run in, or an
        exception: the directory is then in no known state)``."""
        store, watching = self.store, self.watcher
        if workdir is None:
            path = tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=store.jobs)
            workdir = Workdir("dir:" + os.path.basename(path), path)
            self.all[workdir.name] = workdir
        workdir.status = "building"
        load = self.directories
        target = os.path.join(store.jobs, f"job-{job_id}-{os.urandom(4).hex()}")
        parked_dir, state, tracker = self.parked_dir, workdir.state, workdir.tracker
        fresh = not state.entries

        def work() -> tuple[list[bytes], list[bytes], bytes, int]:
            if watching is not None:
                if not fresh:
                    touched, gone, came, missed = watching.take(tracker)
                    if touched or gone or came or (missed and not tracker.unwatched):
                        raise Unusable("it changed while it was parked")
                watching.quiet(tracker)
            if os.path.dirname(workdir.path) == parked_dir:
                os.rename(workdir.path, target)  # the job's own name: no other job's path leads here
                workdir.path = target
            plan = transform(state, root, load)
            if plan.links_changed:
                check_links(state.links, plan)
            stats = apply(store, workdir.path, plan)
            gained, lost = state.apply(plan, stats, time.time_ns())
            if watching is not None:
                if fresh:
                    every = [b""] + [p for p, e in state.entries.items() if e.kind == DIRECTORY]
                    watching.watch(tracker, workdir.path, every, every=True)
                else:
                    watching.watch(tracker, workdir.path, [op.path for op in plan.ops if isinstance(op, MakeDir)])
                watching.loud(tracker)
                watching.take(tracker)  # what the job does is what counts now
            cwd = os.fsencode(workdir.path)
            if rel:  # jq's directory inside DIR: made if git or --exclude left it out (the job's, as it were)
                cwd = os.path.join(cwd, rel)
                if rel not in state.entries:
                    os.makedirs(cwd, exist_ok=True)
            return gained, lost, cwd, len(plan.ops)

        def finished(result: Any) -> None:
            if isinstance(result, Exception):
                done(workdir, result)
                return
            gained, lost, cwd, operations = result
            if not fresh:
                self.log("workdir-reused", dir=workdir.name, job=job_id, operations=operations)
            store.pin(workdir.name, gained)
            store.release(workdir.name, lost)
            workdir.status = "active"
            done(workdir, cwd)

        self.background(work, finished)
        return workdir

    def results(self, workdir: Workdir) -> tuple[list[Change], bool, dict[bytes, Seen]]:
        """(What the job created, changed or deleted; whether all of it could be read; the
        stat of the files among them, when the watches told what changed): from what the
        watches saw, or (events lost) a listing of the whole directory.  Runs off the loop."""
        state, path = workdir.state, workdir.path
        if self.watcher is not None:
            touched, gone, came, lost = self.watcher.seen(workdir.tracker)
            if not lost:
                scope = scope_of(state, touched, gone, self.directories)
                listing, scope, complete = look(path, scope, came)
                changes = results(state, listing, scope)
                files = {c.path: listing[c.path] for c in changes if c.kind == FILE and not c.deleted}
                return changes, complete, files
        listing, complete = scan(path)
        return results(state, listing), complete, {}

    # --- after the job ------------------------------------------------------------------------------------------

    def release(self, workdir: Workdir, reusable: bool, why: str = "",
                kept: Mapping[bytes, tuple[bytes, Seen]] | None = None) -> None:
        """The job is over (its results are with the client): park its directory, or (not
        ``reusable``) discard it; ``--keep-workdir`` leaves it where it is.  A directory the
        job claimed but never changed goes back as it was.  ``kept``: files the client took
        back (path -> (digest of what it got, stat when listed)): the directory keeps them
        (:func:`.dirplan.adopt`) where it can, so that the client's next tree, which holds
        them, is the one it holds."""
        if workdir.status in ("claimed", "parking"):
            workdir.waiter = None
            if workdir.status == "claimed":
                workdir.status = "parked"
            self.store.park(workdir.name, workdir.state.size)
            return
        if self.keep:  # (the worker logged where, when the job started)
            self.all.pop(workdir.name, None)
            self.store.unpin(workdir.name)
            if self.watcher is not None:
                self.watcher.unwatch(workdir.tracker)
            return
        if not reusable:
            self.discard(workdir, why or "not reusable")
            return
        workdir.status = "parking"
        self.store.park(workdir.name, workdir.state.size)  # may evict it at once
        if workdir.evicted:
            self.discard(workdir, "evicted")
            return
        store, state, tracker, watching = self.store, workdir.state, workdir.tracker, self.watcher
        target = os.path.join(self.parked_dir, workdir.name.removeprefix("dir:"))

        def work() -> tuple[int, int, list[bytes], list[bytes], list[tuple[bytes, int]]]:
            if watching is not None:
                watching.quiet(tracker)
            os.rename(workdir.path, target)  # from now on no path the job knew leads here
            workdir.path = target
            if watching is not None:
                watching.loud(tracker)  # (the rename was ours)
            held = holders(target)
            if held:
                raise Unusable(f"process {held[0]} still uses it")
            os.chmod(target, 0o700)
            if watching is not None:  # what the job changed (and anything since): the tracker starts afresh
                touched, gone, came, lost = watching.take(tracker)
            else:
                touched, gone, came, lost = set(), set(), set(), True
            gained: list[bytes] = []
            dropped: list[bytes] = []
            blobs: list[tuple[bytes, int]] = []
            kept_files = 0
            new_dirs: list[bytes] = []
            if lost:
                listing, complete = scan(target)
                plan = restore(state, listing)
            else:
                load = self.directories
                scope = scope_of(state, touched, gone, load)
                listing, scope, complete = look(target, scope, came)
                if kept and complete:
                    adopted = self._adopt(target, state, listing, kept, load, blobs)
                    if adopted is not None:
                        plan_kept, stats_kept, new_dirs = adopted
                        gained, dropped = state.apply(plan_kept, stats_kept)
                        scope -= stats_kept.keys()
                        kept_files = len(stats_kept)
                plan = restore(state, listing, scope)
            if not complete:
                raise Unusable("a part of it cannot be read")
            if watching is not None:
                watching.quiet(tracker)
            stats = apply(store, target, plan)
            more, fewer = state.apply(plan, stats)
            if watching is not None:
                if lost or gone or came:  # directories moved: every watch is looked at again (and named anew)
                    every = [b""] + [p for p, e in state.entries.items() if e.kind == DIRECTORY]
                    watching.watch(tracker, target, every, every=True)
                else:
                    watching.watch(tracker, target, new_dirs + [op.path for op in plan.ops if isinstance(op, MakeDir)])
                watching.loud(tracker)  # from now on, any change is someone tampering with it
            return len(plan.ops), kept_files, gained + more, dropped + fewer, blobs

        def finished(result: Any) -> None:
            waiter, workdir.waiter = workdir.waiter, None
            if isinstance(result, Exception):
                why = result.strerror if isinstance(result, OSError) and result.strerror else str(result)
                self.discard(workdir, why)
            else:
                restored, kept_files, gained, dropped, blobs = result
                store.pin(workdir.name, gained)
                for digest, size in blobs:
                    store.added(digest, size)
                store.release(workdir.name, dropped)
                if workdir.evicted:
                    self.discard(workdir, "evicted")
                else:
                    store.park(workdir.name, state.size)  # (its size may have changed)
                    self.log("workdir-parked", dir=workdir.name, restored=restored, kept=kept_files)
                    workdir.status = "claimed" if waiter is not None else "parked"
                    if waiter is not None:
                        store.unpark(workdir.name)
            if waiter is not None:
                waiter(workdir if workdir.status == "claimed" else None)
            waiting, self._after_parking = self._after_parking, []
            for then in waiting:
                then()

        self.background(work, finished)

    def _adopt(self, target: str, state: TreeState, listing: Mapping[bytes, Seen],
               kept: Mapping[bytes, tuple[bytes, Seen]], load: StoreDirectories,
               blobs: list[tuple[bytes, int]]) -> tuple[Plan, dict[bytes, Seen], list[bytes]] | None:
        """Keep the files the client took back (those unchanged since, now copied into the
        cache too, so that they can be put back after a later job): the plan that records
        them in ``state``, their stat, and the directories the job made that the tree now
        holds.  Off the loop; ``blobs`` gets what the cache gained."""
        files: dict[bytes, Entry] = {}
        stats: dict[bytes, Seen] = {}
        for path, (digest, seen) in kept.items():
            if listing.get(path) != seen or not stat.S_ISREG(seen[0]):
                continue  # changed since it was sent: put back instead
            try:
                fd = open_result(target, path)
            except OSError:
                continue
            try:
                if not self.store.import_file(fd, digest, seen[2]):
                    continue
            finally:
                os.close(fd)
            blobs.append((digest, seen[2]))
            files[path] = Entry(path.rpartition(b"/")[2], FILE, stat.S_IMODE(seen[0]) & MODE_MASK, seen[3], seen[2],
                                digest)
            stats[path] = seen
        if not files:
            return None
        new_dirs: dict[bytes, int] = {}
        for path in files:
            parent = path.rpartition(b"/")[0]
            while parent and parent not in new_dirs:
                entry = state.entries.get(parent)
                if entry is not None and entry.kind == DIRECTORY:
                    break
                new_dirs[parent] = stat.S_IMODE(listing[parent][0])
                parent = parent.rpartition(b"/")[0]
        plan, directories = adopt(state, files, new_dirs, load, make_directory)
        for digest, data in directories.items():
            self.store.import_bytes(digest, data)
            blobs.append((digest, len(data)))
        return plan, stats, list(new_dirs)

    def discard(self, workdir: Workdir, why: str) -> None:
        """Forget the directory and remove it (off the loop)."""
        self.all.pop(workdir.name, None)
        self.store.unpark(workdir.name)
        self.store.unpin(workdir.name)
        waiter, workdir.waiter = workdir.waiter, None
        workdir.status = "discarded"
        self.log("workdir-discarded", dir=workdir.name, why=why)
        path, store, watching = workdir.path, self.store, self.watcher

        def remove() -> None:
            if watching is not None:
                watching.unwatch(workdir.tracker)
            store.remove_workdir(path)

        self.background(remove, lambda _: None)
        if waiter is not None:
            waiter(None)

    def _evicted(self, name: str) -> None:
        """The cache let a parked directory go (its pins are released already)."""
        workdir = self.all.get(name)
        if workdir is None:
            return
        if workdir.status == "parked":
            self.discard(workdir, "evicted")
        else:
            workdir.evicted = True  # being parked: discarded once that is done

    def _clear_leftovers(self) -> None:
        """What an earlier run left parked: its state is gone with it."""
        os.makedirs(self.parked_dir, mode=0o700, exist_ok=True)
        names = os.listdir(self.parked_dir)
        if names:
            store, parked = self.store, self.parked_dir

            def remove() -> None:
                for name in names:
                    store.remove_workdir(os.path.join(parked, name))

            self.background(remove, lambda _: None)


def check_links(links: dict[bytes, bytes], plan: Plan) -> None:
    """:class:`BadManifest` if, once ``plan`` is applied, a symlink of the tree leads out of it."""
    after = dict(links)
    for path in plan.removed:
        after.pop(path, None)
    for path, entry in plan.added.items():
        if entry.kind == SYMLINK:
            after[path] = entry.target
        else:
            after.pop(path, None)
    for path, target in after.items():
        try:
            check_symlink_target(path, target, after)
        except UnsafePath as e:
            raise BadManifest(str(e)) from None


__all__ = ["Unusable", "Workdir", "Workdirs", "check_links"]
