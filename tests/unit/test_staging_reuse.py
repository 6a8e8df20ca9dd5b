"""A staged job's directory kept and reused, on a real file system: the worker's stager end to end
(without a server), inotify against a full listing, leftover processes, and jq's stat cache."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from jobqueue import protocol as p
from jobqueue import wire as w
from jobqueue.staging import scan as scan_module
from jobqueue.staging.afterjob import results
from jobqueue.staging.blobstore import BlobStore
from jobqueue.staging.clientside import ClientStager
from jobqueue.staging.fetchplan import FetchRules
from jobqueue.staging.holders import holders
from jobqueue.staging.materialise import final_tree, scan
from jobqueue.staging.scan import scan as client_scan
from jobqueue.staging.watch import watcher
from jobqueue.staging.workerside import WorkerStager
from tests.conftest import wait_for


class Worker:
    """One worker stager (its parked directories live as long as it does) and the jobs it runs."""

    def __init__(self, store: BlobStore) -> None:
        self.to_client: list[bytes] = []
        self.staged: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.delivered: list[str] = []
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.stager = WorkerStager(store, lambda m: self.to_client.append(p.encode(m)),
                                   lambda j, cwd: self.staged.__setitem__(j, os.fsdecode(cwd)),
                                   lambda j, why: self.failed.__setitem__(j, why), self.delivered.append,
                                   log=lambda event, **fields: self.log.append((event, fields)))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.log if event == name]

    def run(self, root: str, job: str, change: Any = None, rules: FetchRules | None = None,
            stat_cache: str | None = None) -> str:
        """Stage ``root`` as ``job``, let ``change(workdir)`` be the job, bring its results back,
        forget it; returns the directory it ran in."""
        snap = client_scan(root, cache_dir=stat_cache, use_cache=stat_cache is not None)
        self.needs = 0
        to_worker: list[bytes] = []
        client = ClientStager(snap, rules or FetchRules(none=True), w, job, lambda m: to_worker.append(w.encode(m)),
                              lambda line: None)
        self.client = client

        def pump() -> None:
            while to_worker or self.to_client:
                while self.to_client:
                    msg = w.decode_to_client(self.to_client.pop(0))
                    self.needs += isinstance(msg, w.Need)
                    client.handle(msg)
                while to_worker:
                    msg = p.decode_to_worker(to_worker.pop(0))
                    if isinstance(msg, p.Blob):
                        self.stager.on_blob(msg)
                    elif isinstance(msg, p.Want):
                        self.stager.on_want(msg)
                    elif isinstance(msg, p.Ack):
                        self.stager.on_ack(msg)

        self.stager.begin(job, 1, p.JobSpec([b"true"], {}, b"", stage=snap.root_digest))
        pump()
        assert not self.failed, self.failed
        workdir = self.staged[job]
        if change is not None:
            change(workdir)
        self.stager.collect(job)
        pump()
        assert job in self.delivered
        self.stager.forget(job)
        return workdir


def _tree(root: str) -> None:
    for rel, data, mode in [("src/a.c", b"int a;\n", 0o644), ("src/b.c", b"int b;\n", 0o644),
                            ("docs/guide.md", b"guide\n", 0o644), ("run.sh", b"#!/bin/sh\n", 0o755),
                            ("ro/r", b"r", 0o444), ("big", os.urandom(300_000), 0o600)]:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    os.symlink("src/b.c", os.path.join(root, "link"))
    os.mkdir(os.path.join(root, "empty"))
    os.chmod(os.path.join(root, "ro"), 0o555)


def test_a_change_deep_in_the_tree_costs_one_round_trip(tmp_path, monkeypatch) -> None:
    """The worker's first Need offers the client to push what changed since its last snapshot."""
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    root = str(tmp_path / "deep")
    os.makedirs(os.path.join(root, "a", "b", "c", "d"))
    for level in ("", "a", "a/b", "a/b/c", "a/b/c/d"):
        for i in range(20):
            with open(os.path.join(root, level, f"f{i}"), "w") as f:
                f.write(f"{level} {i}\n")
    worker = Worker(BlobStore(str(tmp_path / "cache"), 1 << 30, max_parked=2))
    cache = str(tmp_path / "statcache")
    worker.run(root, "j0", stat_cache=cache)
    worker.run(root, "j1", stat_cache=cache)
    assert worker.needs == 0 and worker.client.blobs_sent == 0
    with open(os.path.join(root, "a", "b", "c", "d", "f3"), "w") as f:
        f.write("changed\n")
    worker.run(root, "j2", stat_cache=cache)
    assert worker.needs == 1 and worker.client.blobs_sent == 6  # the file, its four directories and the root
    assert worker.events("workdir-reused")[-1]["operations"] == 1
    fresh = Worker(BlobStore(str(tmp_path / "cache2"), 1 << 30))  # a worker that has nothing: asked level by level
    fresh.run(root, "j3", stat_cache=cache)
    assert fresh.needs == 6 and fresh.client.blobs_sent == 5 * 20 + 5


def _vandalise(workdir: str) -> None:
    j = lambda *names: os.path.join(workdir, *names)  # noqa: E731
    with open(j("src", "a.c"), "r+b") as f:  # in place
        f.write(b"XX")
    with open(j("big"), "r+b") as f:
        f.seek(100_000)
        f.write(b"corrupt")
    os.utime(j("big"), ns=(os.stat(j("big")).st_atime_ns, os.stat(j("big")).st_mtime_ns - 10**9))
    os.chmod(j("run.sh"), 0o600)
    os.unlink(j("link"))
    os.symlink("elsewhere", j("link"))
    os.rename(j("docs"), j("moved"))
    os.mkdir(j("docs"))
    with open(j("docs", "new.md"), "w") as f:
        f.write("new")
    os.link(j("src", "b.c"), j("hard"))
    os.rmdir(j("empty"))
    with open(j("empty"), "w") as f:
        f.write("not a directory now")
    os.mkfifo(j("fifo"))
    os.chmod(j("ro"), 0o755)
    os.unlink(j("ro", "r"))
    os.chmod(j("ro"), 0o500)


@pytest.fixture
def project(tmp_path) -> str:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "project")
    _tree(root)
    yield root
    os.chmod(os.path.join(root, "ro"), 0o755)


def test_a_parked_directory_is_brought_back_and_reused_by_the_next_job(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30, max_parked=2)
    worker = Worker(store)
    worker.run(project, "j0")

    def parked() -> str:
        names = os.listdir(os.path.join(store.directory, "parked"))
        assert len(names) == 1
        return os.path.join(store.directory, "parked", names[0])

    pristine = final_tree(parked())  # as it was made
    first = worker.run(project, "j1", _vandalise)
    assert worker.events("workdir-parked")[-1]["restored"] > 0
    second = worker.run(project, "j2", lambda workdir: None)
    assert worker.events("workdir-reused") and not worker.events("workdir-discarded")
    assert first != second and not os.path.exists(first)  # a new name for each job
    assert final_tree(parked()) == pristine
    with open(os.path.join(parked(), "big"), "rb") as f, open(os.path.join(project, "big"), "rb") as g:
        assert f.read() == g.read()
    # one change here: the parked directory is turned into the new tree, nothing else is written
    with open(os.path.join(project, "src", "b.c"), "w") as f:
        f.write("int b = 2;\n")
    worker.run(project, "j3", lambda workdir: None)
    assert worker.events("workdir-reused")[-1]["operations"] == 1
    with open(os.path.join(parked(), "src", "b.c")) as f:
        assert f.read() == "int b = 2;\n"


@pytest.mark.skipif(watcher() is None, reason="no inotify here")
def test_what_came_back_is_kept_so_that_the_next_tree_sends_nothing(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30, max_parked=2)
    worker = Worker(store)
    worker.run(project, "j0")

    def build(workdir: str) -> None:  # rewrites a source, makes objects in a new directory, deletes a file
        with open(os.path.join(workdir, "src", "a.c"), "a") as f:
            f.write("/* edited */\n")
        os.makedirs(os.path.join(workdir, "out", "obj"))
        for name in ("a.o", "b.o"):
            with open(os.path.join(workdir, "out", "obj", name), "wb") as f:
                f.write(os.urandom(5000))
        with open(os.path.join(workdir, "scratch.tmp"), "w") as f:
            f.write("not fetched")
        os.unlink(os.path.join(workdir, "docs", "guide.md"))

    worker.run(project, "j1", build, FetchRules(patterns=("src/", "out/")))
    assert worker.events("workdir-parked")[-1]["kept"] == 3
    assert os.path.exists(os.path.join(project, "out", "obj", "a.o"))
    worker.run(project, "j2", lambda workdir: None)
    assert worker.client.blobs_sent == 0  # the client's tree now is the one the worker kept
    assert worker.events("workdir-reused")[-1]["operations"] == 0
    parked = os.path.join(store.directory, "parked")
    kept = os.path.join(parked, os.listdir(parked)[0])
    assert not os.path.exists(os.path.join(kept, "scratch.tmp"))  # not taken back: not kept
    assert os.path.exists(os.path.join(kept, "docs", "guide.md"))  # deleted there, not here: put back
    for rel in ("src/a.c", "out/obj/b.o"):
        with open(os.path.join(kept, rel), "rb") as f, open(os.path.join(project, rel), "rb") as g:
            assert f.read() == g.read()
    # a later job that changes a kept file: it is put back from the cache, which has a copy
    worker.run(project, "j3", lambda workdir: open(os.path.join(workdir, "out", "obj", "a.o"), "r+b").write(b"X"))
    with open(os.path.join(kept, "out/obj/a.o"), "rb") as f, open(os.path.join(project, "out/obj/a.o"), "rb") as g:
        assert f.read() == g.read()


def _swap(workdir: str) -> None:
    j = lambda *names: os.path.join(workdir, *names)  # noqa: E731
    os.rename(j("src"), j("tmp"))
    os.rename(j("docs"), j("src"))
    os.rename(j("tmp"), j("docs"))


def _touch_inside(workdir: str) -> None:
    with open(os.path.join(workdir, "src", "a.c"), "a") as f:
        f.write("more\n")
    with open(os.path.join(workdir, "docs", "guide.md"), "a") as f:
        f.write("more\n")


@pytest.mark.skipif(watcher() is None, reason="no inotify here")
def test_what_the_watches_saw_is_what_a_full_listing_finds(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30, max_parked=2)
    worker = Worker(store)
    worker.run(project, "j0")
    for number, change in enumerate([_vandalise, _swap, _touch_inside, _swap, _touch_inside], 1):
        seen: list[tuple[Any, Any]] = []

        def job(workdir: str, change: Any = change, job_id: str = f"j{number}", seen: list[Any] = seen) -> None:
            change(workdir)
            record = worker.stager.runs[job_id].dir
            assert record is not None and not record.tracker.lost
            listing, complete = scan(workdir)
            seen.append((worker.stager.dirs.results(record)[:2], (results(record.state, listing), complete)))

        worker.run(project, f"j{number}", job)
        watched, full = seen[0]
        assert watched == full and watched[0], change.__name__
        assert worker.events("workdir-reused")[-1]["job"] == f"j{number}"  # (the same directory every time)


def test_a_directory_a_process_still_holds_is_discarded(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30, max_parked=2)
    worker = Worker(store)
    procs: list[subprocess.Popen[bytes]] = []

    def leave_a_process(workdir: str) -> None:
        procs.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], cwd=workdir,
                                      stdin=subprocess.PIPE))

    try:
        worker.run(project, "j1", leave_a_process)
        assert worker.events("workdir-discarded")[0]["why"] == f"process {procs[0].pid} still uses it"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    worker.run(project, "j2")
    assert not worker.events("workdir-reused")  # nothing was left to reuse: a fresh one


def test_holders_sees_a_working_directory_an_open_file_and_a_mapping(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 4096)
    code = {"cwd": "import sys; sys.stdin.read()",
            "fd": "import sys; f = open(sys.argv[1] + '/f'); sys.stdin.read()",
            "map": "import mmap, os, sys; fd = os.open(sys.argv[1] + '/f', os.O_RDWR); "
                   "m = mmap.mmap(fd, 4096); os.close(fd); sys.stdin.read()"}
    for what, source in code.items():
        proc = subprocess.Popen([sys.executable, "-c", source, str(tmp_path / "d")], stdin=subprocess.PIPE,
                                cwd=str(tmp_path / "d") if what == "cwd" else "/")
        try:
            wait_for(lambda pid=proc.pid: pid in holders(tmp_path / "d"), 10, f"{what} to be seen")
            assert proc.pid not in holders(tmp_path / "e")
        finally:
            proc.kill()
            proc.wait()


def test_the_stat_cache_reuses_directories_and_still_sees_every_change(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    root = str(tmp_path / "tree")
    _tree(root)
    cache = str(tmp_path / "statcache")

    def both() -> tuple[Any, Any]:
        cached, fresh = client_scan(root, cache_dir=cache), client_scan(root, use_cache=False)
        encoded = set(cached.directories)
        assert cached.root_digest == fresh.root_digest
        for digest, data in fresh.directories.items():
            assert cached.directory(digest) == data  # made again from the cache where it was not encoded
        assert cached.local == fresh.local and cached.blobs == fresh.blobs and cached.links == fresh.links
        assert (cached.files, cached.size) == (fresh.files, fresh.size)
        return cached, encoded

    both()
    again, encoded = both()
    assert again.hashed == 0 and not encoded  # nothing hashed, no directory encoded again
    for change in (lambda: os.chmod(os.path.join(root, "run.sh"), 0o700),
                   lambda: (os.unlink(os.path.join(root, "link")), os.symlink("run.sh", os.path.join(root, "link"))),
                   lambda: os.rename(os.path.join(root, "src", "a.c"), os.path.join(root, "src", "c.c")),
                   lambda: os.mkdir(os.path.join(root, "docs", "sub"))):
        before = client_scan(root, cache_dir=cache).root_digest
        change()
        after, _ = both()
        assert after.root_digest != before
    os.chmod(os.path.join(root, "ro"), 0o755)


def test_a_file_rewritten_within_the_timestamps_grain_is_hashed_again(tmp_path, monkeypatch) -> None:
    """Racy git: a file changed again right after a scan may keep its size and timestamps
    (they move by clock ticks); what was scanned that recently is not vouched for by its stat."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "f").write_bytes(b"one")
    frozen = os.lstat(root / "f")
    real_scandir = os.scandir

    class Entry:
        def __init__(self, entry: Any) -> None:
            self.entry, self.name, self.path = entry, entry.name, entry.path

        def stat(self, follow_symlinks: bool = True) -> Any:
            return frozen if self.name == b"f" else self.entry.stat(follow_symlinks=follow_symlinks)

    monkeypatch.setattr(scan_module.os, "scandir", lambda path: [Entry(e) for e in real_scandir(path)])
    cache = str(tmp_path / "statcache")
    first = client_scan(str(root), cache_dir=cache)
    first.saved()
    (root / "f").write_bytes(b"two")  # the stat the scan sees stays exactly the same
    second = client_scan(str(root), cache_dir=cache)
    second.saved()
    assert second.hashed == 1 and second.root_digest != first.root_digest
    assert second.root_digest == client_scan(str(root), use_cache=False).root_digest
