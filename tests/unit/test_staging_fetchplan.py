"""Which results come back: created/changed files, --fetch patterns, --no-fetch, --fetch-deletes, kept local files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging.fetchplan import Change, FetchRules, changed_here, diff, refused_symlinks, select
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


def links_of(local: dict[bytes, bytes]) -> Callable[[bytes], bytes | None]:
    return local.get


def test_a_chain_of_symlinks_brought_back_that_leads_out_is_refused_in_any_order() -> None:
    chain = [Change(b"x", DIRECTORY), Change(b"x/up", SYMLINK, target=b".."),
             Change(b"chain", SYMLINK, target=b"x/up/..")]
    assert set(refused_symlinks(chain, links_of({}))) == {b"chain"}
    before = [Change(b"a", SYMLINK, target=b"z/up/.."), Change(b"z/up", SYMLINK, target=b"..")]
    assert set(refused_symlinks(before, links_of({}))) == {b"a"}
    assert refused_symlinks([Change(b"in", SYMLINK, target=b"x/up/x")], links_of({b"x/up": b".."})) == {}


def test_local_symlinks_count_unless_replaced_by_a_file_or_a_deletion() -> None:
    local = {b"out": b"../elsewhere", b"deep": b"a/b"}  # e.g. left out by .gitignore; deep leads inside
    assert set(refused_symlinks([Change(b"l", SYMLINK, target=b"out/x")], links_of(local))) == {b"l"}
    up = Change(b"l", SYMLINK, target=b"deep/../..")  # through the link: a/b/../.. is the root; without: outside
    assert refused_symlinks([up], links_of(local)) == {}
    assert set(refused_symlinks([up, Change(b"deep", FILE)], links_of(local))) == {b"l"}
    assert set(refused_symlinks([up, Change(b"deep", SYMLINK, deleted=True)], links_of(local))) == {b"l"}
    # a directory is never made over a symlink: the local one stays
    assert refused_symlinks([up, Change(b"deep", DIRECTORY)], links_of(local)) == {}


names = st.sampled_from([b"a", b"b", b"s", b"t"])
relpaths = st.lists(names, min_size=1, max_size=2).map(b"/".join)
link_targets = st.lists(st.sampled_from([b"a", b"s", b"t", b"..", b"."]), min_size=1, max_size=4).map(b"/".join)


@given(st.dictionaries(relpaths, link_targets, max_size=3), st.dictionaries(relpaths, link_targets, max_size=3))
@settings(max_examples=200, deadline=None)
def test_accepted_symlinks_resolve_inside_dir_on_a_real_file_system(local: dict[bytes, bytes],
                                                                      back: dict[bytes, bytes]) -> None:
    """Differential: local symlinks (anything, as under an ignored path), then the
    accepted ones brought back written over them as jq does: each resolves inside DIR."""
    with tempfile.TemporaryDirectory() as outer:
        root = os.path.join(os.fsencode(outer), b"root")
        os.mkdir(root)

        def place(path: bytes, target: bytes) -> bool:
            parent = os.path.dirname(os.path.join(root, path))
            try:
                os.makedirs(parent, exist_ok=True)
                if os.path.islink(parent) or not os.path.realpath(parent).startswith(root):
                    return False
                if os.path.lexists(os.path.join(root, path)):
                    if not os.path.islink(os.path.join(root, path)):
                        return False
                    os.unlink(os.path.join(root, path))
                os.symlink(target, os.path.join(root, path))
            except OSError:
                return False
            return True

        local = {path: target for path, target in local.items() if place(path, target)}

        def local_link(path: bytes) -> bytes | None:
            full = os.path.join(root, path)
            return os.readlink(full) if os.path.islink(full) and os.path.realpath(
                os.path.dirname(full)) == os.path.dirname(full) else None

        changes = [Change(path, SYMLINK, target=target) for path, target in sorted(back.items())]
        refused = refused_symlinks(changes, local_link)
        written = [c.path for c in changes if c.path not in refused and place(c.path, c.target)]
        real_root = os.path.realpath(root)
        for path in written:
            resolved = os.path.realpath(os.path.join(root, path))
            assert resolved == real_root or resolved.startswith(real_root + b"/"), (local, back, refused, path)
