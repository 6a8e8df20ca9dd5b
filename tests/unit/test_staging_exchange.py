"""Both halves of a staged job talking through the real codecs (jq's wire module on the client,
msgspec's on the worker), without a server: staging, results back, kept local files, a hostile worker."""

from __future__ import annotations

import os
from typing import Any

import pytest

from jobqueue import protocol as p
from jobqueue import wire as w
from jobqueue.staging import scan as scan_module
from jobqueue.staging.blobstore import BlobStore
from jobqueue.staging.clientside import ClientStager, inline_blobs
from jobqueue.staging.fetchplan import FetchRules
from jobqueue.staging.manifest import FILE, SYMLINK
from jobqueue.staging.scan import scan
from jobqueue.staging.workerside import WorkerStager


class Link:
    """A client stager and a worker stager joined by lists of encoded frames."""

    def __init__(self, root: str, store: BlobStore, rules: FetchRules | None = None, attempt: int = 1,
                 stat_cache: str | None = None) -> None:
        self.snap = scan(root, use_cache=stat_cache is not None, cache_dir=stat_cache)
        self.snap.saved()
        self.to_worker: list[bytes] = []
        self.to_client: list[bytes] = []
        self.said: list[str] = []
        self.staged: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.delivered: list[str] = []
        self.client = ClientStager(self.snap, rules or FetchRules(), w, "job",
                                   lambda m: self.to_worker.append(w.encode(m)), self.said.append)
        self.worker = WorkerStager(store, lambda m: self.to_client.append(p.encode(m)),
                                   lambda j, cwd: self.staged.__setitem__(j, os.fsdecode(cwd)),
                                   lambda j, why: self.failed.__setitem__(j, why), self.delivered.append)
        self.attempt = attempt
        self.spec = p.JobSpec([b"true"], {}, b"", stage=self.snap.root_digest)
        self.needs = 0

    def run(self) -> None:
        while self.to_worker or self.to_client:
            while self.to_client:
                msg: Any = w.decode_to_client(self.to_client.pop(0))
                self.needs += isinstance(msg, w.Need)
                self.client.handle(msg)
            while self.to_worker:
                msg = p.decode_to_worker(self.to_worker.pop(0))
                if isinstance(msg, p.Blob):
                    self.worker.on_blob(msg)
                elif isinstance(msg, p.Want):
                    self.worker.on_want(msg)
                elif isinstance(msg, p.Ack):
                    self.worker.on_ack(msg)
                # a Signal (the client gave up) ends nothing here: the test looks at client.failed

    def stage(self) -> str:
        self.worker.begin("job", self.attempt, self.spec)
        self.run()
        assert not self.failed, self.failed
        return self.staged["job"]

    def results(self) -> None:
        self.worker.collect("job")
        self.run()
        assert self.delivered == ["job"]


@pytest.fixture
def project(tmp_path) -> str:  # type: ignore[no-untyped-def]
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    for i in range(300):
        (root / "src" / f"f{i}.c").write_text(f"int f{i};\n")
    (root / "Makefile").write_text("all:\n")
    (root / "big").write_bytes(os.urandom(3 * w.WINDOW + 17))  # more than the window: flow control
    os.utime(root / "Makefile", ns=(10**18, 10**18))
    return str(root)


def test_a_tree_goes_over_and_results_come_back_with_their_mtimes(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    link = Link(project, store)
    workdir = link.stage()
    assert link.client.blobs_sent == 300 + 2 + 2  # files, and the two directories
    with open(os.path.join(workdir, "big"), "rb") as f, open(os.path.join(project, "big"), "rb") as g:
        assert f.read() == g.read()
    # the job: builds an object, rewrites a source in place, deletes one, makes a link and a directory
    os.makedirs(os.path.join(workdir, "out", "deep"))
    with open(os.path.join(workdir, "out", "deep", "f.o"), "wb") as f:
        f.write(b"\x7fELF" + bytes(range(256)))
    os.utime(os.path.join(workdir, "out", "deep", "f.o"), ns=(1_700_000_000_000_000_007,) * 2)
    with open(os.path.join(workdir, "src", "f1.c"), "r+b") as f:
        f.write(b"long")
    os.unlink(os.path.join(workdir, "src", "f2.c"))
    os.symlink("deep/f.o", os.path.join(workdir, "out", "latest"))
    link.results()
    assert not link.said
    with open(os.path.join(project, "out", "deep", "f.o"), "rb") as f:
        assert f.read() == b"\x7fELF" + bytes(range(256))
    assert os.stat(os.path.join(project, "out", "deep", "f.o")).st_mtime_ns == 1_700_000_000_000_000_007
    assert open(os.path.join(project, "src", "f1.c")).read() == "longf1;\n"
    assert os.readlink(os.path.join(project, "out", "latest")) == "deep/f.o"
    assert os.path.exists(os.path.join(project, "src", "f2.c"))  # no --fetch-deletes
    assert link.client.fetched == 3
    link.worker.forget("job")
    assert not os.path.exists(workdir)


def test_an_unchanged_tree_sends_nothing_and_one_change_sends_one_file(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    first = Link(project, store)
    first.stage()
    first.worker.forget("job")
    again = Link(project, store)
    again.stage()
    assert again.client.blobs_sent == 0 and again.needs == 0
    again.worker.forget("job")
    with open(os.path.join(project, "src", "f7.c"), "w") as f:
        f.write("changed\n")
    changed = Link(project, store)
    changed.stage()
    # the file, its directory and the root: the unchanged subtree was not listed again
    assert changed.client.blobs_sent == 3
    assert changed.client.bytes_sent < 20_000


def test_what_changed_since_the_last_snapshot_goes_with_the_job_and_needs_no_asking(project: str, tmp_path,
                                                                                    monkeypatch) -> None:
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    stat_cache = str(tmp_path / "statcache")
    first = Link(project, store, stat_cache=stat_cache)
    assert inline_blobs(first.snap) == []  # no earlier snapshot: nothing is known to have changed
    first.stage()
    first.worker.forget("job")
    with open(os.path.join(project, "src", "f7.c"), "w") as f:
        f.write("changed\n")
    changed = Link(project, store, stat_cache=stat_cache)
    changed.spec.stage_push = pushed = inline_blobs(changed.snap)
    assert len(pushed) == 3 and (changed.snap.blob(pushed[-1][0]) or (b"",))[0] == b"src/f7.c"
    assert staged_file(changed.stage(), "src/f7.c") == b"changed\n"
    assert changed.needs == 0 and changed.client.blobs_sent == 0  # nothing asked, nothing streamed
    changed.worker.forget("job")
    with open(os.path.join(project, "src", "f7.c"), "w") as f:
        f.write("again\n")
    tampered = Link(project, store, stat_cache=stat_cache)
    tampered.spec.stage_push = [(digest, data + b"!") for digest, data in inline_blobs(tampered.snap)]
    assert staged_file(tampered.stage(), "src/f7.c") == b"again\n"  # the bad ones were left out, and asked for
    assert tampered.needs >= 1 and tampered.client.blobs_sent == 3


def test_the_files_of_pushed_blobs_are_written_once_the_job_has_started(project: str, tmp_path, monkeypatch) -> None:
    """What came with the job goes into its directory from memory; the cache's files follow, off its way."""
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    stat_cache = str(tmp_path / "statcache")
    Link(project, store, stat_cache=stat_cache).stage()
    with open(os.path.join(project, "src", "f7.c"), "w") as f:
        f.write("changed\n")
    changed = Link(project, store, stat_cache=stat_cache)
    changed.spec.stage_push = pushed = inline_blobs(changed.snap)
    later: list[tuple[Any, Any]] = []
    changed.worker.background = lambda work, done: later.append((work, done))  # the stager's own work waits
    workdir = changed.stage()
    assert staged_file(workdir, "src/f7.c") == b"changed\n" and changed.needs == 0
    assert all(store.has(digest) and not os.path.exists(store.path(digest)) for digest, _data in pushed)
    work, done = later.pop()
    done(work())
    assert later == [] and store.unwritten == {}
    for digest, data in pushed:
        with open(store.path(digest), "rb") as f:
            assert f.read() == data


def test_what_the_results_wrote_is_not_taken_for_a_change_the_worker_lacks(project: str, tmp_path,
                                                                          monkeypatch) -> None:
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    stat_cache = str(tmp_path / "statcache")
    link = Link(project, store, stat_cache=stat_cache)
    workdir = link.stage()
    os.makedirs(os.path.join(workdir, "out", "deep"))
    with open(os.path.join(workdir, "out", "deep", "f.o"), "wb") as f:
        f.write(b"object")
    with open(os.path.join(workdir, "src", "f1.c"), "wb") as f:
        f.write(b"rewritten")
    link.results()
    link.client.close()  # (jq closes it when the job ends: what came back is written down)
    after = scan(project, cache_dir=stat_cache)
    after.saved()
    assert after.hashed == 2 and after.changed(1 << 20, 1 << 20) == []  # the worker's tree as the job left it
    with open(os.path.join(project, "src", "f3.c"), "w") as f:
        f.write("edited here\n")
    edited = scan(project, cache_dir=stat_cache)
    assert len(edited.changed(1 << 20, 1 << 20)) == 3  # a real change: the file, src, the root


def staged_file(workdir: str, rel: str) -> bytes:
    with open(os.path.join(workdir, rel), "rb") as f:
        return f.read()


def test_deletes_patterns_and_no_fetch(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    link = Link(project, store, FetchRules(patterns=("*.o",), deletes=True))
    workdir = link.stage()
    for name in ("a.o", "a.log"):
        with open(os.path.join(workdir, name), "w") as f:
            f.write(name)
    os.unlink(os.path.join(workdir, "Makefile"))
    link.results()
    assert os.path.exists(os.path.join(project, "a.o")) and not os.path.exists(os.path.join(project, "a.log"))
    assert os.path.exists(os.path.join(project, "Makefile"))  # --fetch *.o: Makefile is not among them
    link.worker.forget("job")
    nothing = Link(project, store, FetchRules(none=True))
    workdir = nothing.stage()
    with open(os.path.join(workdir, "b.o"), "w") as f:
        f.write("b")
    nothing.results()
    assert not os.path.exists(os.path.join(project, "b.o"))


def test_a_local_file_edited_during_the_job_is_kept(project: str, tmp_path) -> None:
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    link = Link(project, store)
    workdir = link.stage()
    with open(os.path.join(workdir, "Makefile"), "w") as f:
        f.write("the job's\n")
    with open(os.path.join(workdir, "report.xml"), "w") as f:
        f.write("the job's\n")
    with open(os.path.join(project, "Makefile"), "w") as f:
        f.write("mine\n")
    with open(os.path.join(project, "report.xml"), "w") as f:
        f.write("mine too\n")
    link.results()
    assert open(os.path.join(project, "Makefile")).read() == "mine\n"
    assert open(os.path.join(project, "report.xml")).read() == "mine too\n"
    assert link.said == [f"jq: kept local {project}/Makefile: changed here while the job ran",
                         f"jq: kept local {project}/report.xml: changed here while the job ran"]


def test_a_hostile_worker_cannot_write_outside_dir(tmp_path) -> None:
    root = tmp_path / "dir"
    root.mkdir()
    (root / "f").write_text("f")
    link = Link(str(root), BlobStore(str(tmp_path / "cache"), 1 << 30))
    link.stage()
    (root / "escape").symlink_to(tmp_path)  # a local symlink out of DIR (made after the scan: it refuses those)
    entries = [p.ResultEntry(b"../../x", FILE, 0o644, 0, 1), p.ResultEntry(b"/tmp/y", FILE, 0o644, 0, 1),
               p.ResultEntry(b"escape/z", FILE, 0o644, 0, 1), p.ResultEntry(b"l", SYMLINK, 0o777, 0, 9, b"../../etc"),
               p.ResultEntry(b"sub/../../w", FILE, 0o644, 0, 1)]
    link.to_client.append(p.encode(p.Results("job", 1, entries, True)))
    link.run()
    wanted = p.decode_to_worker(link.to_worker[-1]) if link.to_worker else None
    assert len(link.said) == 5 and all("did not bring back" in line for line in link.said), link.said
    assert wanted is None or not getattr(wanted, "indexes", [])
    for index in range(5):  # data for what was not asked for is refused outright
        link.to_client.append(p.encode(p.ResultData("job", 1, 0, index, b"x", True)))
    link.run()
    assert link.client.failed.startswith("the worker sent a result that was not asked for")
    assert sorted(os.listdir(tmp_path)) == ["cache", "dir"]
    assert sorted(os.listdir(root)) == ["escape", "f"]


def test_a_worker_breaking_the_results_protocol_fails_the_job_but_its_run_still_ends(project: str,
                                                                                     tmp_path) -> None:
    """Bytes for a result that was not asked for: the client writes nothing more, but it
    acknowledges what comes, so that the worker's run ends (and jq with 255, saying why)."""
    link = Link(project, BlobStore(str(tmp_path / "cache"), 1 << 30))
    workdir = link.stage()
    for name in ("a.out", "b.out"):
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(os.urandom(2 * w.CHUNK_SIZE))
    honest = link.worker.send

    def hostile(msg: p.Message) -> None:
        honest(p.ResultData(msg.job_id, msg.attempt, msg.offset, 99, msg.data, msg.end)
               if isinstance(msg, p.ResultData) else msg)

    link.worker.send = hostile
    link.results()  # asserts the worker delivered: its run ends
    assert link.client.failed == "the worker sent a result that was not asked for (index 99)"
    assert not os.path.exists(os.path.join(project, "a.out")) and not os.path.exists(os.path.join(project, "b.out"))
    assert not [name for name in os.listdir(project) if name.startswith(".jq-fetch-")]


def test_a_requeued_attempt_is_staged_again_from_the_same_snapshot(project: str, tmp_path) -> None:
    link = Link(project, BlobStore(str(tmp_path / "cache1"), 1 << 30))
    link.stage()
    # the worker was lost; another one, with an empty cache, runs attempt 2
    link.worker = WorkerStager(BlobStore(str(tmp_path / "cache2"), 1 << 30),
                               lambda m: link.to_client.append(p.encode(m)),
                               lambda j, cwd: link.staged.__setitem__(j, os.fsdecode(cwd)),
                               lambda j, why: link.failed.__setitem__(j, why), link.delivered.append)
    link.attempt = 2
    workdir = link.stage()
    assert os.path.exists(os.path.join(workdir, "src", "f299.c"))
    assert link.client.blobs_sent == 2 * 304


def test_a_file_changed_after_the_snapshot_fails_staging_clearly(project: str, tmp_path) -> None:
    link = Link(project, BlobStore(str(tmp_path / "cache"), 1 << 30))
    with open(os.path.join(project, "Makefile"), "w") as f:
        f.write("changed after the scan\n")
    link.worker.begin("job", 1, link.spec)
    link.run()
    assert link.client.failed == f"{project}/Makefile changed while it was being staged"


def test_a_server_restart_while_staging_or_fetching_loses_nothing(project: str, tmp_path) -> None:
    link = Link(project, BlobStore(str(tmp_path / "cache"), 1 << 30))
    link.worker.begin("job", 1, link.spec)
    for _ in range(3):  # some blobs go through, then the server dies with what was in flight
        link.client.handle(w.decode_to_client(link.to_client.pop(0)))
        while link.to_worker:
            msg = p.decode_to_worker(link.to_worker.pop(0))
            if isinstance(msg, p.Blob):
                link.worker.on_blob(msg)
            if not link.to_client:
                break
    link.to_worker.clear()
    link.to_client.clear()
    link.client.resumed(1)
    link.worker.resume("job")
    link.run()
    workdir = link.staged["job"]
    assert open(os.path.join(workdir, "big"), "rb").read() == open(os.path.join(project, "big"), "rb").read()
    with open(os.path.join(workdir, "out.bin"), "wb") as f:
        f.write(os.urandom(3 * w.CHUNK_SIZE))
    link.worker.collect("job")
    link.client.handle(w.decode_to_client(link.to_client.pop(0)))  # Results
    want = p.decode_to_worker(link.to_worker.pop(0))
    assert isinstance(want, p.Want)
    link.worker.on_want(want)
    link.client.handle(w.decode_to_client(link.to_client.pop(0)))  # the first chunk, then the server dies
    assert not link.delivered
    link.to_worker.clear()
    link.to_client.clear()
    link.client.resumed(1)
    link.worker.resume("job")
    link.run()
    assert link.delivered == ["job"] and not link.said
    assert open(os.path.join(project, "out.bin"), "rb").read() == open(os.path.join(workdir, "out.bin"), "rb").read()
