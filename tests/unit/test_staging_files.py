"""Staging's file shells on a real file system: scan -> blob store -> a job's directory -> results back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from jobqueue.staging import scan as scan_module
from jobqueue.staging import writeback
from jobqueue.staging.blobstore import BlobStore
from jobqueue.staging.clientside import _Source
from jobqueue.staging.fetchplan import diff
from jobqueue.staging.manifest import DIRECTORY, FILE, SYMLINK, check_tree, missing
from jobqueue.staging.materialise import final_tree, materialise, open_result
from jobqueue.staging.scan import StageError, scan

ODD_NAME = b"sp ace\nnew\xffline"
EVERY_BYTE = bytes(range(256)) * 5


def _make_tree(root: bytes) -> None:
    os.makedirs(os.path.join(root, b"src", b"deep"))
    os.makedirs(os.path.join(root, b"empty"))
    for rel, data, mode in [(b"src/a.c", b"int main(){}\n", 0o644), (b"run.sh", b"#!/bin/sh\n", 0o755),
                            (b"secret", b"s", 0o600), (b"ro", b"r", 0o444), (ODD_NAME, EVERY_BYTE, 0o640),
                            (b"src/deep/copy", b"int main(){}\n", 0o644), (b"zero", b"", 0o644)]:
        path = os.path.join(root, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        os.utime(path, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    os.symlink(b"src/a.c", os.path.join(root, b"link"))
    os.symlink(b"../../run.sh", os.path.join(root, b"src/deep/up"))
    os.mkfifo(os.path.join(root, b"fifo"))


def _stage(snap: scan_module.Snapshot, store: BlobStore, owner: str = "job") -> None:
    """What the worker and client do over the wire, here directly."""
    while True:
        need, seen = missing(snap.root_digest, store.has, store.read)
        store.pin(owner, seen)
        if not need:
            return
        for digest in need:
            source = _Source(snap, digest)
            writer = store.writer(digest, source.size)
            while not source.done:
                writer.write(source.read(7))
            source.close()
            writer.finish()


@pytest.fixture
def tree(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    root = os.fsencode(tmp_path / "project")
    os.mkdir(root)
    _make_tree(root)
    return root


def test_a_tree_arrives_whole_modes_mtimes_links_empty_dirs_and_odd_names(tree: bytes, tmp_path) -> None:
    snap = scan(tree, cache_dir=str(tmp_path / "statcache"))
    assert snap.skipped == [(b"fifo", "FIFO")]
    assert snap.files == 7 and len(snap.blobs) == 6  # two files share one blob
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    _stage(snap, store)
    work = os.path.join(store.jobs, "j1")
    os.mkdir(work)
    materialise(store, snap.root_digest, work)
    flat = check_tree(snap.root_digest, snap.directories)
    final = final_tree(work)
    assert set(final) == set(flat)
    assert diff(flat, final) == []
    assert final[b"empty"].kind == DIRECTORY and final[b"link"].kind == SYMLINK
    with open(os.path.join(os.fsencode(work), ODD_NAME), "rb") as f:
        assert f.read() == EVERY_BYTE
    st = os.stat(os.path.join(os.fsencode(work), b"run.sh"))
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o755, 1_500_000_000_123_456_789)
    assert os.readlink(os.path.join(os.fsencode(work), b"src/deep/up")) == b"../../run.sh"


def test_a_job_writing_into_a_staged_file_in_place_leaves_the_cache_intact(tree: bytes, tmp_path) -> None:
    snap = scan(tree, use_cache=False)
    store = BlobStore(str(tmp_path / "cache"), 1 << 30)
    _stage(snap, store)
    first, second = os.path.join(store.jobs, "1"), os.path.join(store.jobs, "2")
    os.mkdir(first)
    materialise(store, snap.root_digest, first)
    with open(os.path.join(first, "src", "a.c"), "r+b") as f:  # in place: same inode
        f.write(b"CORRUPT")
    os.mkdir(second)
    materialise(store, snap.root_digest, second)
    with open(os.path.join(second, "src", "a.c"), "rb") as f:
        assert f.read() == b"int main(){}\n"
    store.remove_workdir(first)
    assert not os.path.exists(first)


def test_an_unchanged_tree_is_not_hashed_again(tree: bytes, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(scan_module, "RACY_NS", 0)
    cache = str(tmp_path / "statcache")
    first = scan(tree, cache_dir=cache)
    assert first.hashed == 7
    again = scan(tree, cache_dir=cache)
    assert again.hashed == 0 and again.root_digest == first.root_digest
    with open(os.path.join(tree, b"src/a.c"), "ab") as f:
        f.write(b"// changed\n")
    changed = scan(tree, cache_dir=cache)
    assert changed.hashed == 1 and changed.root_digest != first.root_digest
    # the unchanged subtree keeps its digest: only the path to the change differs
    assert len(set(changed.directories) - set(first.directories)) == 2  # src and the root


def test_git_ignore_rules_and_dot_git(tmp_path) -> None:
    root = tmp_path / "repo"
    (root / "build").mkdir(parents=True)
    (root / "build" / "out.o").write_bytes(b"o")
    (root / "keep.c").write_bytes(b"c")
    (root / "debug.log").write_bytes(b"l")
    (root / "new.txt").write_bytes(b"untracked, not ignored")
    (root / "emptydir").mkdir()
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "keep.c", ".gitignore"], check=True)
    paths = set(check_tree(*(lambda s: (s.root_digest, s.directories))(scan(root, use_cache=False))))
    assert paths == {b".gitignore", b"keep.c", b"new.txt", b"emptydir"}
    with_git = scan(root, use_cache=False, stage_git=True, excludes=["*.txt"])
    paths = set(check_tree(with_git.root_digest, with_git.directories))
    assert b".git/HEAD" in paths and b"new.txt" not in paths and b"debug.log" not in paths


def test_excludes_without_git_and_dot_git_left_out(tree: bytes) -> None:
    os.makedirs(os.path.join(tree, b".git"))
    snap = scan(tree, use_cache=False, excludes=["src/deep/", "*.sh"])
    paths = set(check_tree(snap.root_digest, snap.directories))
    assert b"src/a.c" in paths and b"src/deep" not in paths and b"run.sh" not in paths and b".git" not in paths


def test_a_symlink_out_of_the_tree_is_an_error_before_anything_is_sent(tree: bytes) -> None:
    os.symlink(b"/etc/passwd", os.path.join(tree, b"passwd"))
    with pytest.raises(StageError, match="passwd.*points outside"):
        scan(tree, use_cache=False)


def test_an_unreadable_file_is_an_error_naming_it(tmp_path) -> None:
    root = tempfile.mkdtemp(prefix="jq-unreadable-")
    try:
        os.chmod(root, 0o755)
        with open(os.path.join(root, "fine"), "w") as f:
            f.write("x")
        with open(os.path.join(root, "locked"), "w") as f:
            f.write("x")
        os.chmod(os.path.join(root, "locked"), 0)
        # root reads everything: the scan runs as nobody then (after its imports)
        drop = "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n" if os.geteuid() == 0 else ""
        code = ("import os, sys\nfrom jobqueue.staging.scan import scan, StageError\n"
                "from jobqueue.staging.entry import sha256\nsha256()\n" + drop +  # (loaded on first use)
                "try: scan(sys.argv[1], use_cache=False)\nexcept StageError as e: print(e); sys.exit(3)\n")
        run = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, timeout=30)
        assert run.returncode == 3, run.stderr
        assert run.stdout.strip() == f"cannot read {root}/locked: Permission denied"
    finally:
        os.chmod(os.path.join(root, "locked"), 0o600)
        subprocess.run(["rm", "-rf", root], check=True)


def test_results_are_written_atomically_with_mode_and_mtime(tmp_path) -> None:
    root = os.fsencode(tmp_path)
    result = writeback.ResultFile(root, b"out/deep/report.xml", 0o640, 1_600_000_000_000_000_001)
    result.write(b"<ok/>")
    assert os.listdir(tmp_path / "out" / "deep") == [os.fsdecode(result.temp)]  # not in place until committed
    result.commit()
    st = os.stat(tmp_path / "out" / "deep" / "report.xml")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_600_000_000_000_000_001)
    assert os.listdir(tmp_path / "out" / "deep") == ["report.xml"]
    writeback.write_symlink(root, b"out/latest", b"deep/report.xml", 5)
    assert os.readlink(tmp_path / "out" / "latest") == "deep/report.xml"
    writeback.delete(root, b"out/latest", False)
    assert not os.path.lexists(tmp_path / "out" / "latest")


@pytest.mark.parametrize("rel", [b"../x", b"/tmp/x", b"a/../../x", b"", b"a//b", b"a/\0"])
def test_results_naming_paths_outside_dir_are_refused(tmp_path, rel: bytes) -> None:
    root = os.fsencode(tmp_path / "dir")
    os.mkdir(root)
    with pytest.raises(writeback.Refused):
        writeback.ResultFile(root, rel, 0o644, 0)
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(root) == []


def test_results_are_never_written_through_a_symlink(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "dir"
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file").write_bytes(b"f")
    for rel in (b"link/x", b"file/x"):
        with pytest.raises(writeback.Refused):
            writeback.ResultFile(os.fsencode(root), rel, 0o644, 0)
    with pytest.raises(writeback.Refused):
        writeback.write_symlink(os.fsencode(root), b"evil", b"../outside", 0)
    assert os.listdir(outside) == [] and sorted(os.listdir(root)) == ["file", "link"]


def test_a_batch_of_checks_opens_each_directory_once_and_never_passes_a_symlink(tmp_path, monkeypatch) -> None:
    root = tmp_path / "dir"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"f")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_bytes(b"secret")
    (root / "link").symlink_to(tmp_path / "outside")
    opened: list[object] = []
    real_open = os.open
    monkeypatch.setattr(writeback.os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    parents = writeback.Parents(os.fsencode(root))
    try:
        for _ in range(3):
            assert writeback.lstat_at(b"unused", b"a/b/f", parents).st_size == 1
            writeback.check_writable(b"unused", b"a/b/new", parents)
            assert writeback.lstat_at(b"unused", b"link/f", parents) is None  # not through the symlink
            with pytest.raises(writeback.Refused):
                writeback.check_writable(b"unused", b"link/x", parents)
            assert writeback.lstat_at(b"unused", b"missing/f", parents) is None
        assert opened.count(b"a") == opened.count(b"b") == 1 and opened.count(os.fsencode(root)) == 1
    finally:
        parents.close()
    monkeypatch.setattr(writeback.Parents, "LIMIT", 2)  # past its limit it lets go of what it kept
    parents = writeback.Parents(os.fsencode(root))
    for _ in range(2):
        assert writeback.lstat_at(b"unused", b"a/b/f", parents) is not None
    parents.close()


def test_a_worker_never_reads_a_result_through_a_symlink(tmp_path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    work = tmp_path / "work"
    work.mkdir()
    (work / "d").symlink_to(tmp_path)
    (work / "f").symlink_to(tmp_path / "secret")
    for rel in (b"d/secret", b"f"):
        with pytest.raises(OSError):
            open_result(str(work), rel)


def test_file_kinds_are_what_they_say() -> None:
    assert (FILE, SYMLINK, DIRECTORY) == (0, 1, 2)
