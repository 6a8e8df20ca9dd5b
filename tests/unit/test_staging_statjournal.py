"""The stat cache's file: a base and a journal of deltas (pure), then the shell on disk."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging import scan as scan_module
from jobqueue.staging import statjournal
from jobqueue.staging.scan import scan
from jobqueue.staging.statcache import StatCache, cache_path
from jobqueue.staging.statjournal import MAGIC, decode, encode_base, encode_delta, should_append

ROOT = b"/tree"
VIEW = (False, (), None)
DIRS = [b"", b"a", b"a/b", b"c"]

paths = st.sampled_from(DIRS)
entries = st.dictionaries(paths, st.binary(max_size=12), max_size=4)
watches = st.one_of(st.none(), st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 50)), st.just(VIEW)))
deltas = st.lists(st.tuples(entries, st.lists(paths, max_size=2), watches), max_size=6)


def _journal(base: dict, base_watch: object, records: list) -> tuple[bytes, list[int], list[tuple[dict, object]]]:
    """A file of ``records`` each appended by a scan that read all before it; the record
    boundaries; the state after each (the model: later wins, removed go)."""
    data = encode_base(ROOT, base, base_watch)
    state, watch = dict(base), base_watch
    ends, states = [len(data)], [(dict(state), watch)]
    for changed, removed, their_watch in records:
        data += encode_delta(len(data), changed, removed, their_watch)
        state.update(changed)
        for rel in removed:
            state.pop(rel, None)
        watch = their_watch
        ends.append(len(data))
        states.append((dict(state), watch))
    return data, ends, states


@given(entries, watches, deltas)
def test_a_journal_of_sequential_saves_reads_back_as_the_last_state(base, base_watch, records) -> None:
    data, ends, states = _journal(base, base_watch, records)
    loaded = decode(data, ROOT)
    assert loaded is not None and loaded.clean
    assert (loaded.entries, loaded.watch) == states[-1]
    assert (loaded.end, loaded.base_size, loaded.records) == (len(data), ends[0], len(records))


@given(entries, watches, deltas, st.data())
def test_a_torn_tail_is_ignored_and_makes_the_next_save_compact(base, base_watch, records, data) -> None:
    whole, ends, states = _journal(base, base_watch, records)
    cut = data.draw(st.integers(0, len(whole)))
    loaded = decode(whole[:cut], ROOT)
    if cut < ends[0]:
        assert loaded is None  # (the base is renamed into place whole: a shorter file was damaged)
        return
    assert loaded is not None
    whole_records = max(i for i, end in enumerate(ends) if end <= cut)
    assert (loaded.entries, loaded.watch) == states[whole_records]
    assert loaded.end == ends[whole_records]
    assert loaded.clean == (cut == ends[whole_records])
    if not loaded.clean:
        assert not should_append(loaded, 0)


@given(entries, watches, deltas, st.data())
def test_a_damaged_record_ends_the_journal_where_it_starts(base, base_watch, records, data) -> None:
    whole, ends, states = _journal(base, base_watch, records)
    if len(ends) < 2:
        return
    at = data.draw(st.integers(ends[0], len(whole) - 1))
    damaged = bytearray(whole)
    damaged[at] ^= data.draw(st.integers(1, 255))
    loaded = decode(bytes(damaged), ROOT)
    assert loaded is not None and not loaded.clean
    hit = max(i for i, end in enumerate(ends) if end <= at)  # the record damaged starts at ends[hit]
    assert (loaded.entries, loaded.watch, loaded.end) == (*states[hit], ends[hit])


def test_other_files_are_not_a_stat_cache() -> None:
    good = encode_base(ROOT, {b"": (b"m", b"d", 0, 0, 0)}, None)
    assert decode(good, ROOT) is not None
    assert decode(good, b"/elsewhere") is None
    assert decode(b"", ROOT) is None
    assert decode(b"\xff" * 40, ROOT) is None
    assert decode(MAGIC[:-1] + b"\x04" + good[len(MAGIC):], ROOT) is None  # another format
    assert decode(MAGIC + good[len(MAGIC):len(MAGIC) + 4] + b"\x00" * 9, ROOT) is None


def test_saves_append_until_the_journal_outgrows_its_share_of_the_base() -> None:
    base = encode_base(ROOT, {b"d%d" % i: (b"x" * 100, b"d", 0, 0, 0) for i in range(100)}, None)
    data = base
    appended = 0
    while True:
        loaded = decode(data, ROOT)
        record = encode_delta(loaded.end, {b"d1": (b"y" * 100, b"e", 0, 0, 0)}, [], None)
        if not should_append(loaded, len(record)):
            break
        data += record
        appended += 1
    assert len(data) - len(base) <= len(base) * statjournal.JOURNAL_SHARE
    assert 0 < appended < statjournal.MAX_RECORDS
    assert not should_append(None, 0)


# --- racing writers --------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("change"), st.sampled_from(DIRS[:2]), st.integers(0, 1)),  # a directory's content changes
    st.tuples(st.just("scan"), st.just(0), st.just(0)),  # a jq scans (reads the file, asks the watcher)
    # its save (the oldest or the newest pending): appends (when it may), writes the whole file
    # again, or dies mid-append
    st.tuples(st.sampled_from(["append", "append", "compact", "torn"]), st.sampled_from([0, -1]), st.integers(1, 30)),
    st.tuples(st.just("restart"), st.just(0), st.just(0)),  # a new watcher (another epoch)
), max_size=30)


class _World:
    """Directories whose content changes, a stage watcher's journal of those changes,
    and the stat cache file (the path's current file, and the files writers hold open)."""

    def __init__(self) -> None:
        self.content = dict.fromkeys(DIRS, 0)
        self.epoch, self.step = 1, 0
        self.log: list[tuple[int, bytes]] = []  # (step, directory changed)
        self.file = bytearray(encode_base(ROOT, dict(self.content), ((self.epoch, 0), VIEW)))
        self.pending: list[tuple[bytearray, statjournal.Loaded | None, dict, dict, tuple]] = []

    def change(self, rel: bytes, value: int) -> None:
        self.content[rel] = value
        self.step += 1
        self.log.append((self.step, rel))

    def changed_since(self, watch: object) -> set[bytes] | None:
        if watch is None or watch[1] != VIEW or watch[0][0] != self.epoch:  # type: ignore[index]
            return None  # list everything
        return {rel for step, rel in self.log if step > watch[0][1]}  # type: ignore[index]

    def scan(self) -> None:
        """What jq's scan does with the file: load it, take what the watcher vouches for,
        list the rest; its save comes later."""
        loaded = decode(bytes(self.file), ROOT)
        old = loaded.entries if loaded is not None else {}
        since = self.changed_since(loaded.watch if loaded is not None else None)
        watch = ((self.epoch, self.step), VIEW)
        new = {rel: old[rel] if since is not None and rel not in since and rel in old else self.content[rel]
               for rel in DIRS}
        changed = {rel: value for rel, value in new.items() if old.get(rel, -1) != value}
        self.pending.append((self.file, loaded, changed, new, watch))

    def check(self) -> None:
        """The next scan takes nothing stale from the file."""
        loaded = decode(bytes(self.file), ROOT)
        if loaded is None:
            return
        since = self.changed_since(loaded.watch)
        if since is None:
            return
        for rel in DIRS:
            if rel not in since:
                assert loaded.entries.get(rel) == self.content[rel], (rel, loaded.watch, self.log)


def _race(steps: list[tuple]) -> None:
    world = _World()
    for op, a, b in steps:
        if op == "change":
            world.change(a, b)
        elif op == "scan":
            world.scan()
        elif op == "restart":
            world.epoch, world.step, world.log = world.epoch + 1, 0, []
        elif world.pending:
            file, loaded, changed, new, watch = world.pending.pop(a)
            record = encode_delta(loaded.end, changed, [], watch) if loaded is not None else b""
            if op == "compact" or not should_append(loaded, 0):
                world.file = bytearray(encode_base(ROOT, new, watch))  # a new file renamed into place
            else:
                file += record[:b] if op == "torn" else record  # (to the file it loaded: maybe replaced since)
        world.check()


@given(ops)
@settings(max_examples=1000, deadline=None)
def test_racing_scans_never_leave_a_memo_older_than_the_token(steps) -> None:
    _race(steps)


def test_a_directory_changed_and_changed_back_between_racing_scans_is_listed_again() -> None:
    # scan 1 sees "a" at 1 and appends it; scan 2, which read the file before that, sees "a" back at 0
    # (as it had loaded it: nothing to write) and appends its newer token after: "a" = 1 under that
    # token would be taken as unchanged next time
    _race([("change", b"a", 1), ("scan", 0, 0), ("change", b"a", 0), ("scan", 0, 0),
           ("append", 0, 0), ("append", 0, 0)])


# --- on disk -------------------------------------------------------------------------------------


def _tree(top, monkeypatch) -> str:
    monkeypatch.setenv("JOBQUEUE_STAGE_WATCH", "0")
    monkeypatch.setattr(scan_module, "RACY_NS", 0)  # (what was written before a scan is trusted by it)
    root = top / "tree"
    for d in range(30):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (root / f"d{d}" / f"f{f}").write_bytes(b"%d %d" % (d, f))
    return str(root)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_change_appends_a_delta_and_a_torn_one_is_compacted_away(tmp_path, monkeypatch) -> None:
    root = _tree(tmp_path, monkeypatch)
    cache = str(tmp_path / "statcache")
    first = scan(root, use_git=False, cache_dir=cache)
    first.saved()
    path = cache_path(os.fsencode(os.path.abspath(root)), cache)
    base = os.path.getsize(path)
    old = os.stat(path)
    with open(os.path.join(root, "d1", "f1"), "wb") as f:
        f.write(b"changed")
    second = scan(root, use_git=False, cache_dir=cache)
    second.saved()
    grown = os.stat(path)
    assert grown.st_ino == old.st_ino and base < grown.st_size < 2 * base  # appended to, not replaced
    loaded = decode(_read(path), os.fsencode(os.path.abspath(root)))
    assert loaded is not None and loaded.records == 1
    again = scan(root, use_git=False, cache_dir=cache)
    again.saved()
    assert second.hashed == 1 and again.hashed == 0 and again.root_digest == second.root_digest
    with open(path, "ab") as f:
        f.write(b"\x05\x00\x00\x00torn")  # a save that died mid-write
    with open(os.path.join(root, "d2", "f0"), "wb") as f:
        f.write(b"changed")
    third = scan(root, use_git=False, cache_dir=cache)
    third.saved()
    assert third.hashed == 1
    assert os.stat(path).st_ino != old.st_ino  # compacted: the torn record went
    loaded = decode(_read(path), os.fsencode(os.path.abspath(root)))
    assert loaded is not None and loaded.clean and loaded.records == 0
    fourth = scan(root, use_git=False, cache_dir=cache)
    fourth.saved()
    assert fourth.hashed == 0 and fourth.root_digest == third.root_digest


def test_an_unchanged_scan_leaves_the_file_alone_and_closes_it(tmp_path, monkeypatch) -> None:
    root = _tree(tmp_path, monkeypatch)
    cache = str(tmp_path / "statcache")
    scan(root, use_git=False, cache_dir=cache).saved()
    path = cache_path(os.fsencode(os.path.abspath(root)), cache)
    before = os.stat(path)
    stat_cache = StatCache(os.fsencode(os.path.abspath(root)), cache)
    assert stat_cache._file is not None
    stat_cache.close()
    assert stat_cache._file is None
    snap = scan(root, use_git=False, cache_dir=cache)
    assert snap.saving is None and snap.hashed == 0
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
