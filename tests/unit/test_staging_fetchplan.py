"""Which results come back: created/changed files, --fetch patterns, --no-fetch, --fetch-deletes, kept local files."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobqueue.staging.fetchplan import Change, FetchRules, changed_here, diff, select
from jobqueue.staging.manifest import DIRECTORY, FILE, SYMLINK, Entry

D = b"d" * 32


def f(name: bytes, mtime: int = 1, size: int = 1, mode: int = 0o644) -> Entry:
    return Entry(name.rsplit(b"/", 1)[-1], FILE, mode, mtime, size, D)


SNAP = {b"src": Entry(b"src", DIRECTORY, 0o755, 0, 0, D), b"src/a.c": f(b"src/a.c"), b"Makefile": f(b"Makefile"),
        b"old": f(b"old"), b"l": Entry(b"l", SYMLINK, 0o777, 1, 1, b"", b"src")}


def test_diff_reports_created_and_changed_then_deleted_children_first() -> None:
    final = {b"src": Entry(b"src", DIRECTORY, 0o700, 0, 0), b"src/a.c": f(b"src/a.c"),
             b"src/a.o": f(b"src/a.o", mtime=5), b"Makefile": f(b"Makefile", mode=0o755),
             b"l": Entry(b"l", SYMLINK, 0o777, 9, 3, b"", b"src"), b"new": Entry(b"new", DIRECTORY, 0o755, 0)}
    changes = diff(SNAP, final)
    assert [(c.path, c.deleted) for c in changes] == [
        (b"Makefile", False), (b"new", False), (b"src/a.o", False), (b"old", True)]
    assert diff(SNAP, SNAP) == []


def test_a_file_whose_size_or_mtime_changed_is_brought_back() -> None:
    assert [c.path for c in diff(SNAP, {**SNAP, b"src/a.c": f(b"src/a.c", mtime=2)})] == [b"src/a.c"]
    assert [c.path for c in diff(SNAP, {**SNAP, b"src/a.c": f(b"src/a.c", size=2)})] == [b"src/a.c"]


CHANGES = [Change(b"report.xml", FILE), Change(b"build/a.o", FILE), Change(b"build", DIRECTORY),
           Change(b"gone", FILE, deleted=True), Change(b"edited", FILE)]


def _select(rules: FetchRules, matches=None, now=None):  # type: ignore[no-untyped-def]
    before = {b"gone": (1, 1, 1, 1), b"edited": (2, 2, 2, 2)}
    current = {b"gone": (1, 1, 1, 1), b"edited": (2, 2, 3, 3)} if now is None else now
    return select(CHANGES, rules, matches, before, current.get, taken_ns=100)


def test_selection_follows_the_rules_and_keeps_what_changed_here() -> None:
    s = _select(FetchRules())
    assert [c.path for c in s.fetch] == [b"report.xml", b"build/a.o", b"build"]
    assert s.kept == [b"edited"] and s.delete == []
    s = _select(FetchRules(deletes=True))
    assert [c.path for c in s.delete] == [b"gone"]
    s = _select(FetchRules(none=True, deletes=True))
    assert s.fetch == s.delete == s.kept == []
    s = _select(FetchRules(patterns=("*.o",)), matches=lambda p, d: p.endswith(b".o"))
    assert [c.path for c in s.fetch] == [b"build/a.o"]


def test_an_unstaged_local_file_is_overwritten_unless_it_appeared_or_changed_after_the_snapshot() -> None:
    assert not changed_here(None, None, 100)
    assert not changed_here(None, (1, 1, 50, 50), 100)  # an ignored build output from before
    assert changed_here(None, (1, 1, 150, 150), 100)  # made here while the job ran
    assert changed_here((1, 1, 1, 1), None, 100)  # deleted here
    assert not changed_here((1, 1, 1, 1), (1, 1, 1, 1), 100)


keys = st.none() | st.tuples(*[st.integers(0, 3)] * 4)


@given(keys, keys)
def test_a_staged_path_is_kept_exactly_when_its_stat_changed(before, now) -> None:  # type: ignore[no-untyped-def]
    if before is not None:
        assert changed_here(before, now, 10**9) == (before != now)
