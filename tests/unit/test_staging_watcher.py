"""The stage watcher, a real process with real inotify: a scan that trusts it sees
every change a full listing sees, and lists only what changed."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from jobqueue.staging import scan as scan_module
from jobqueue.staging import watchclient
from jobqueue.staging.scan import Snapshot, scan
from jobqueue.staging.watchd import LOCAL_FILE_SYSTEMS, file_system_type
from tests.conftest import wait_for
from tests.support.staging import stop_watcher

pytestmark = pytest.mark.timeout(180)


def _watched(root: bytes) -> None:
    """Start ``root``'s watcher as jq does (a first scan) and wait until it answers."""
    scan(root, cache_dir=os.fsdecode(root) + ".first-cache")  # no watcher yet: this starts it
    wait_for(lambda: watchclient.ask(root, None) is not None, 20, "the stage watcher to answer")


@pytest.fixture
def watching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQUEUE_STAGE_WATCH", "always")
    monkeypatch.setenv("JOBQUEUE_STAGE_WATCH_IDLE", "120")


@pytest.fixture
def tree(tmp_path, watching) -> Iterator[bytes]:
    root = tmp_path / "tree"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
        for n in range(3):
            (root / d / f"f{n}").write_bytes(b"x" * n)
    (root / "top").write_bytes(b"top")
    path = os.fsencode(root)
    yield path
    stop_watcher(path)


def _digests(snap: Snapshot) -> dict[bytes, bytes]:
    """Relative path -> digest, of every file."""
    found = {}
    for rel, item in snap.listed:
        memo = scan_module.memo_of(item)
        for (name, mode, *_), value in zip(memo[6], memo[3]):
            if stat.S_ISREG(mode):
                found[rel + b"/" + name if rel else name] = value
    return found


def _same(cached: Snapshot, fresh: Snapshot) -> None:
    assert cached.root_digest == fresh.root_digest
    assert cached.local == fresh.local and cached.links == fresh.links
    files = _digests(fresh)
    assert _digests(cached) == files
    assert cached.blobs.keys() == fresh.blobs.keys()
    assert all(files[path] == digest for digest, (path, _size) in cached.blobs.items())  # any path holding it
    assert (cached.files, cached.size) == (fresh.files, fresh.size)
    assert cached.skipped == fresh.skipped


def test_an_unchanged_tree_is_not_listed_and_a_change_lists_only_its_directory(tree: bytes, tmp_path) -> None:
    cache = str(tmp_path / "statcache")
    _watched(tree)
    first = scan(tree, cache_dir=cache)  # the first with a token: lists everything
    first.saved()
    assert first.relisted == 4
    again = scan(tree, cache_dir=cache)
    again.saved()
    assert again.relisted == 0 and again.hashed == 0 and again.root_digest == first.root_digest
    with open(os.path.join(tree, b"a/b/f1"), "wb") as f:
        f.write(b"y")  # the same size, within the same timestamp tick most likely
    changed = scan(tree, cache_dir=cache)
    changed.saved()
    assert changed.relisted == 1  # (its files, all made in the last 2 s, are hashed again: racy-git)
    _same(changed, scan(tree, use_cache=False))


def test_without_a_watcher_or_with_it_off_the_tree_is_listed(tree: bytes, tmp_path, monkeypatch) -> None:
    cache = str(tmp_path / "statcache")
    monkeypatch.setenv("JOBQUEUE_STAGE_WATCH", "0")
    scan(tree, cache_dir=cache).saved()
    assert scan(tree, cache_dir=cache).relisted == 4
    assert watchclient.ask(tree, None) is None  # none was started


def test_a_watcher_that_ended_is_started_again_and_its_old_tokens_are_refused(tree: bytes, tmp_path) -> None:
    cache = str(tmp_path / "statcache")
    _watched(tree)
    scan(tree, cache_dir=cache).saved()
    stop_watcher(tree)
    (open(os.path.join(tree, b"c/new"), "wb")).close()  # unseen by any watcher
    relisted = scan(tree, cache_dir=cache)  # no watcher: lists all, starts one
    relisted.saved()
    assert relisted.relisted == 4 and b"c/new" in relisted.local
    wait_for(lambda: watchclient.ask(tree, None) is not None, 20, "a new stage watcher")
    after = scan(tree, cache_dir=cache)  # a new watcher: the old token means nothing to it
    after.saved()
    assert after.relisted == 4
    assert scan(tree, cache_dir=cache).relisted == 0


def test_a_filter_change_lists_everything(tree: bytes, tmp_path) -> None:
    cache = str(tmp_path / "statcache")
    _watched(tree)
    scan(tree, cache_dir=cache).saved()
    scan(tree, cache_dir=cache).saved()
    excluded = scan(tree, cache_dir=cache, excludes=["c/"])
    excluded.saved()
    assert excluded.relisted == 3 and b"c/f1" not in excluded.local
    assert scan(tree, cache_dir=cache).relisted == 4


def test_the_watcher_answers_no_one_else_and_nothing_it_does_not_watch(tree: bytes) -> None:
    _watched(tree)
    assert watchclient.ask(tree + b"/a", None) is None  # another root: no watcher there
    assert file_system_type(tree) in LOCAL_FILE_SYSTEMS


class TreeChanges(RuleBasedStateMachine):
    """Random changes to a watched tree; after each, a scan that trusts the watcher and its
    stat cache equals a full scan without either."""

    names = st.sampled_from(["f", "g", "h"])
    dirs = st.sampled_from(["", "a", "a/b", "c", "c/d"])

    @initialize()
    def start(self) -> None:
        self.top = tempfile.mkdtemp(prefix="jq-watch-")
        self.root = os.fsencode(os.path.join(self.top, "tree"))
        self.cache = os.path.join(self.top, "statcache")
        for d in ("a/b", "c"):
            os.makedirs(os.path.join(self.root, os.fsencode(d)))
        _watched(self.root)
        scan(self.root, cache_dir=self.cache).saved()

    def teardown(self) -> None:
        if hasattr(self, "root"):
            stop_watcher(self.root)
            shutil.rmtree(self.top, ignore_errors=True)

    def _path(self, d: str, name: str = "") -> bytes:
        return os.path.join(self.root, os.fsencode(d), os.fsencode(name)) if name else \
            os.path.join(self.root, os.fsencode(d))

    @rule(d=dirs, name=names, data=st.binary(max_size=3))
    def write(self, d: str, name: str, data: bytes) -> None:
        if os.path.isdir(self._path(d)) and not os.path.isdir(self._path(d, name)):
            with open(self._path(d, name), "wb") as f:
                f.write(data)

    @rule(d=dirs, name=names)
    def chmod(self, d: str, name: str) -> None:
        if os.path.isfile(self._path(d, name)):
            os.chmod(self._path(d, name), os.stat(self._path(d, name)).st_mode ^ 0o100)

    @rule(d=dirs, name=names)
    def remove(self, d: str, name: str) -> None:
        path = self._path(d, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)

    @rule(d=dirs, name=names)
    def make_directories(self, d: str, name: str) -> None:
        if os.path.isdir(self._path(d)) and not os.path.lexists(self._path(d, name)):
            os.makedirs(os.path.join(self._path(d, name), b"x", b"y"))
            with open(os.path.join(self._path(d, name), b"x", b"y", b"deep"), "wb") as f:
                f.write(b"deep")

    @rule(src=dirs, dst=dirs, name=names)
    def move(self, src: str, dst: str, name: str) -> None:
        source, target = self._path(src), self._path(dst, name)
        if src and os.path.isdir(source) and os.path.isdir(self._path(dst)) and not os.path.lexists(target) \
                and not (dst + "/").startswith(src + "/"):
            os.rename(source, target)

    @rule(d=dirs, name=names)
    def link(self, d: str, name: str) -> None:
        if os.path.isdir(self._path(d)) and not os.path.lexists(self._path(d, name)):
            os.symlink(b"../" if d else b".", self._path(d, name))

    @invariant()
    def a_trusting_scan_sees_what_a_full_one_sees(self) -> None:
        if not hasattr(self, "root"):
            return
        cached = scan(self.root, cache_dir=self.cache)
        cached.saved()
        _same(cached, scan(self.root, use_cache=False))


def test_a_scan_trusting_the_watcher_sees_every_change(watching) -> None:
    settings_ = settings(max_examples=15, stateful_step_count=12, deadline=None)
    TreeChanges.TestCase.settings = settings_
    TreeChanges.TestCase().runTest()


def test_something_else_under_the_watchers_name_is_not_believed_and_no_watcher_is_started(
        tree: bytes, tmp_path) -> None:
    import socket
    import threading

    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(watchclient.socket_name(tree))
    squatter.listen(8)

    def answer_nonsense() -> None:
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:
                return
            with conn:
                conn.recv(1 << 16)
                conn.sendall(b"not marshal at all")

    thread = threading.Thread(target=answer_nonsense, daemon=True)
    thread.start()
    try:
        assert watchclient.ask(tree, None) == (None, None)
        cache = str(tmp_path / "statcache")
        for _ in range(2):
            snap = scan(tree, cache_dir=cache)
            snap.saved()
            assert snap.relisted == 4  # listed as without a watcher, and none is started
    finally:
        squatter.shutdown(socket.SHUT_RDWR)  # (wakes its accept)
        thread.join(5)
        squatter.close()
    assert watchclient.ask(tree, None) is None  # nothing listens: none was started behind the squatter


def test_a_gitignore_change_is_seen_in_directories_the_watcher_calls_unchanged(tree: bytes, tmp_path) -> None:
    import subprocess

    subprocess.run(["git", "init", "-q", os.fsdecode(tree)], check=True)
    cache = str(tmp_path / "statcache")
    _watched(tree)
    scan(tree, cache_dir=cache).saved()
    before = scan(tree, cache_dir=cache)
    before.saved()
    assert before.relisted == 0 and b"a/b/f1" in before.local
    with open(os.path.join(tree, b".gitignore"), "wb") as f:
        f.write(b"f1\n")  # a change in the root only, which leaves out a file deep down
    after = scan(tree, cache_dir=cache)
    after.saved()
    assert b"a/b/f1" not in after.local and b"c/f1" not in after.local and b"a/b/f2" in after.local
    _same(after, scan(tree, use_cache=False))
