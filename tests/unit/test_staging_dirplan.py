"""A job's directory reused from job to job (jobqueue.staging.dirplan), against a model of a file system.

The model applies operations with the kernel's rules for a non-root owner (a
directory must be searchable to reach below it and writable to change its
entries; nothing is created over something else, a rename never replaces a
directory) and gives every write a new ctime.  Properties: a transform of any
tree into any other yields exactly the new tree; the results of a job are
those of fetchplan.diff; a restore after any job brings the tree back, and
every file the job touched is written anew; the recorded stat identities then
describe the directory, so a second look finds nothing changed.
"""

from __future__ import annotations

import stat
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging import afterjob as aj
from jobqueue.staging import dirplan as dp
from jobqueue.staging.fetchplan import diff
from jobqueue.staging.manifest import DIRECTORY, FILE, SYMLINK, Directory, Entry, make_directory

# --- trees -------------------------------------------------------------------------------------------------

NAMES = [b"a", b"b", b"c", b"a b"]
FILE_MODES = [0o644, 0o755, 0o444, 0o600]
DIR_MODES = [0o755, 0o700, 0o555, 0o500, 0o311]
CONTENTS = [bytes([i]) * 32 for i in range(4)]

files = st.tuples(st.just(FILE), st.sampled_from(FILE_MODES), st.integers(0, 3), st.integers(1, 4))
links = st.tuples(st.just(SYMLINK), st.sampled_from([b"a", b"b/c", b"../a"]), st.just(0), st.integers(1, 4))
trees = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), st.one_of(files, links), max_size=3),
    lambda inner: st.dictionaries(st.sampled_from(NAMES), st.one_of(
        files, links, st.tuples(st.just(DIRECTORY), st.sampled_from(DIR_MODES), inner, st.just(0))), max_size=4),
    max_leaves=14)


class Store:
    """Directory blobs by digest (what the worker's cache holds)."""

    def __init__(self) -> None:
        self.dirs: dict[bytes, Directory] = {}

    def build(self, tree: dict[bytes, Any]) -> bytes:
        entries = []
        for name, (kind, a, b, mtime) in tree.items():
            if kind == FILE:
                entries.append(Entry(name, FILE, a, mtime, 10 * b, CONTENTS[b]))
            elif kind == SYMLINK:
                entries.append(Entry(name, SYMLINK, 0o777, mtime, len(a), b"", a))
            else:
                entries.append(Entry(name, DIRECTORY, a, 0, 0, self.build(b)))
        digest, _data = make_directory(entries)
        self.dirs[digest] = Directory(tuple(sorted(entries, key=lambda e: e.name)))
        return digest

    def load(self, digest: bytes) -> Directory:
        return self.dirs[digest]


# --- the model file system -------------------------------------------------------------------------------------


class Node:
    def __init__(self, kind: int, mode: int, mtime: int = 0, size: int = 0, data: bytes = b"", ino: int = 0,
                 ctime: int = 0) -> None:
        self.kind, self.mode, self.mtime, self.size, self.data, self.ino, self.ctime = \
            kind, mode, mtime, size, data, ino, ctime

    def seen(self) -> dp.Seen:
        if self.kind == DIRECTORY:
            return (stat.S_IFDIR | self.mode, self.ino, 0, 0, 0, b"")
        fmt = {FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK, dp.OTHER: stat.S_IFIFO}[self.kind]
        target = self.data if self.kind == SYMLINK else b""
        return (fmt | self.mode, self.ino, self.size, self.mtime, self.ctime, target)


class Refused(Exception):
    """What the kernel would refuse (EACCES, EEXIST, EISDIR, ENOENT...)."""


class FS:
    """A job's directory: relative path -> node (the root, b"", is a directory of mode 0o700)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Node] = {b"": Node(DIRECTORY, 0o700, ino=1)}
        self.clock = 1_000 * dp.RACY_NS
        self.inos = 1

    def tick(self, ns: int = 1) -> int:
        self.clock += ns
        return self.clock

    def new_ino(self) -> int:
        self.inos += 1
        return self.inos

    def listing(self) -> dict[bytes, dp.Seen]:
        return {path: node.seen() for path, node in self.nodes.items() if path}

    def under(self, path: bytes) -> list[bytes]:
        return [p for p in self.nodes if p == path or p.startswith(path + b"/")]

    def reach(self, path: bytes) -> None:
        """Every directory above ``path`` must be searchable."""
        parent = dp.parent_of(path) if path else None
        while parent is not None:
            node = self.nodes.get(parent)
            if node is None or node.kind != DIRECTORY or not node.mode & 0o100:
                raise Refused(f"cannot reach {path!r}")
            parent = dp.parent_of(parent) if parent else None

    def change_in(self, path: bytes) -> None:
        """Entries of the parent of ``path`` change: it must be writable and searchable."""
        self.reach(path)
        if self.nodes[dp.parent_of(path)].mode & 0o300 != 0o300:
            raise Refused(f"parent of {path!r} is not writable")

    def apply(self, op: dp.Op) -> dp.Seen | None:
        path = op.path
        if isinstance(op, (dp.Unlock, dp.SetMode)):
            self.reach(path)
            node = self.nodes.get(path)
            if node is None or node.kind != DIRECTORY:
                raise Refused(f"chmod of {path!r}: not a directory")
            node.mode = 0o700 if isinstance(op, dp.Unlock) else op.mode
            return None
        if isinstance(op, dp.Remove):
            self.change_in(path)
            if path not in self.nodes:
                raise Refused(f"remove {path!r}: missing")
            for p in self.under(path):  # the shell makes each directory usable as it empties it
                del self.nodes[p]
            return None
        if isinstance(op, dp.SetAttrs):
            self.reach(path)
            node = self.nodes.get(path)
            if node is None or node.kind != FILE or node.data != op.entry.digest:
                raise Refused(f"set attributes of {path!r}: not that file")
            node.mode, node.mtime, node.ctime = op.entry.mode, op.entry.mtime_ns, self.tick()
            return node.seen()
        self.change_in(path)
        existing = self.nodes.get(path)
        if isinstance(op, dp.MakeDir):
            if existing is not None:
                raise Refused(f"mkdir {path!r}: exists")
            self.nodes[path] = Node(DIRECTORY, 0o700, ino=self.new_ino())
            return None
        assert isinstance(op, dp.WriteFile)
        if op.replace and (existing is None or existing.kind == DIRECTORY):
            raise Refused(f"rename over {path!r}: missing or a directory")
        if not op.replace and existing is not None:
            raise Refused(f"create {path!r}: exists")
        e = op.entry
        if isinstance(op, dp.MakeLink):
            node = Node(SYMLINK, 0o777, e.mtime_ns, len(e.target), e.target, self.new_ino(), self.tick())
        else:
            node = Node(FILE, e.mode, e.mtime_ns, e.size, e.digest, self.new_ino(), self.tick())
        self.nodes[path] = node
        return node.seen()

    def run(self, plan: dp.Plan) -> dict[bytes, dp.Seen]:
        stats = {}
        for op in plan.ops:
            seen = self.apply(op)
            if seen is not None:
                stats[op.path] = seen
        assert set(stats) == set(plan.written())
        return stats

    def tree(self) -> dict[bytes, tuple[object, ...]]:
        """What a manifest would say of it."""
        out: dict[bytes, tuple[object, ...]] = {}
        for path, n in self.nodes.items():
            if path:
                out[path] = (n.kind, n.mode, 0) if n.kind == DIRECTORY else (n.kind, n.mode, n.mtime, n.size, n.data)
        return out


def manifest_view(flat: dict[bytes, Entry]) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    for path, e in flat.items():
        if e.kind == DIRECTORY:
            out[path] = (DIRECTORY, e.mode, 0)
        elif e.kind == SYMLINK:
            out[path] = (SYMLINK, 0o777, e.mtime_ns, e.size, e.target)
        else:
            out[path] = (FILE, e.mode, e.mtime_ns, e.size, e.digest)
    return out


def prepare(fs: FS, state: dp.TreeState, store: Store, root: bytes, gap: int = 2 * dp.RACY_NS) -> dp.Plan:
    """Turn the directory into the tree ``root``; the job may start ``gap`` ns after the last write."""
    plan = dp.transform(state, root, store.load)
    stats = fs.run(plan)
    fs.tick(gap)
    gained, lost = state.apply(plan, stats, prepared_ns=fs.tick())
    assert not set(gained) & set(lost)
    return plan


def expected_digests(store: Store, root: bytes) -> set[bytes]:
    held = {root} if root != dp.EMPTY else set()
    for entry in dp.flat(root, store.load).values():
        if entry.kind != SYMLINK:
            held.add(entry.digest)
    return held


# --- transform ---------------------------------------------------------------------------------------------------


@given(st.lists(trees, min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_a_transform_turns_any_tree_into_any_other(sequence: list[dict[bytes, Any]]) -> None:
    store, fs, state = Store(), FS(), dp.TreeState()
    for tree in sequence:
        root = store.build(tree)
        prepare(fs, state, store, root)
        flat = dp.flat(root, store.load)
        assert fs.tree() == manifest_view(flat)
        assert state.root == root and state.entries == flat
        assert set(state.digests) == expected_digests(store, root)
        assert state.size == sum(e.size for e in flat.values() if e.kind == FILE)
        assert state.links == {p: e.target for p, e in flat.items() if e.kind == SYMLINK}
        below = {d: sum(p.startswith(d + b"/") if d else True for p in flat) for d in [b""] + list(flat)}
        assert state.below == {d: n for d, n in below.items() if n}
        # what the shell recorded describes the directory: nothing looks touched
        assert {p: s for p, s in fs.listing().items() if p in state.stats} == state.stats
        assert set(state.stats) == {p for p, e in flat.items() if e.kind != DIRECTORY}
        assert aj.results(state, fs.listing()) == []


def test_an_unchanged_tree_is_no_work_and_one_changed_file_touches_only_its_way() -> None:
    store, fs, state = Store(), FS(), dp.TreeState()
    tree = {f"d{i}".encode(): (DIRECTORY, 0o755, {f"f{j}".encode(): (FILE, 0o644, j % 4, 1) for j in range(20)}, 0)
            for i in range(20)}
    first = store.build(tree)
    prepare(fs, state, store, first)
    loads: list[bytes] = []

    def counting(digest: bytes) -> Directory:
        loads.append(digest)
        return store.load(digest)

    assert dp.transform(state, first, counting).ops == [] and loads == []
    tree[b"d7"][2][b"f3"] = (FILE, 0o644, 2, 9)
    second = store.build(tree)
    plan = dp.transform(state, second, counting)
    assert len(loads) == 4  # both roots, both d7s
    new_f3 = dp.flat(second, store.load)[b"d7/f3"]
    assert plan.ops == [dp.WriteFile(b"d7/f3", new_f3, True)]
    assert set(plan.added) == {b"d7", b"d7/f3"} and plan.removed == []
    tree[b"d7"][2][b"f3"] = (FILE, 0o600, 2, 9)  # the same bytes, another mode: no copy
    prepare(fs, state, store, second)
    plan = dp.transform(state, store.build(tree), store.load)
    assert [type(op) for op in plan.ops] == [dp.SetAttrs]


def test_read_only_directories_are_unlocked_to_change_them_and_locked_again() -> None:
    store, fs, state = Store(), FS(), dp.TreeState()
    tree = {b"ro": (DIRECTORY, 0o555, {b"f": (FILE, 0o444, 0, 1)}, 0)}
    prepare(fs, state, store, store.build(tree))
    assert fs.nodes[b"ro"].mode == 0o555
    tree[b"ro"][2][b"g"] = (FILE, 0o444, 1, 1)
    plan = prepare(fs, state, store, store.build(tree))
    assert [type(op).__name__ for op in plan.ops] == ["Unlock", "WriteFile", "SetMode"]
    assert fs.nodes[b"ro"].mode == 0o555 and fs.nodes[b"ro/g"].data == CONTENTS[1]


# --- after a job ---------------------------------------------------------------------------------------------------


class Job:
    """Random things a job does to its directory (as root would: modes do not stop it)."""

    def __init__(self, fs: FS, draw: st.DrawFn) -> None:
        self.fs, self.draw = fs, draw
        self.unseen: set[bytes] = set()  # written without a change of stat (inotify sees them)

    def pick(self, kinds: tuple[int, ...]) -> bytes | None:
        paths = sorted(p for p, n in self.fs.nodes.items() if p and n.kind in kinds)
        return self.draw(st.sampled_from(paths)) if paths else None

    def new_name(self) -> bytes | None:
        parent = self.pick((DIRECTORY,))
        parent = self.draw(st.sampled_from([b"", parent or b""]))
        name = self.draw(st.sampled_from(NAMES + [b"new", b"x y"]))
        path = parent + b"/" + name if parent else name
        return None if path in self.fs.nodes else path

    def step(self) -> None:
        fs, what = self.fs, self.draw(st.sampled_from(
            ["write", "write-racy", "touch", "chmod", "delete", "create", "replace", "rename", "link", "chmod-dir"]))
        if what in ("write", "write-racy", "touch", "chmod", "link"):
            path = self.pick((FILE,))
            if path is None:
                return
            node = fs.nodes[path]
            if what == "write":  # in place: same inode, new bytes (the mtime maybe put back)
                node.data = self.draw(st.sampled_from(CONTENTS + [b"job"]))
                node.size = 10 * CONTENTS.index(node.data) if node.data in CONTENTS else len(node.data)
                node.ctime = fs.tick()
            elif what == "write-racy":  # within the tick of the last write, the same size: the stat does not move
                if node.ctime >= fs.clock - dp.RACY_NS:
                    node.data = b"racy" + bytes(node.size)[4:]
                    self.unseen.update(p for p, n in fs.nodes.items() if n is node)
            elif what == "touch":
                node.mtime, node.ctime = node.mtime + 1, fs.tick()
            elif what == "chmod":
                node.mode, node.ctime = self.draw(st.sampled_from(FILE_MODES)), fs.tick()
            else:  # a hard link elsewhere: both names' ctime moves
                new = self.new_name()
                if new is not None and fs.nodes.get(dp.parent_of(new), Node(FILE, 0)).kind == DIRECTORY:
                    node.ctime = fs.tick()
                    fs.nodes[new] = node
        elif what == "chmod-dir":
            path = self.pick((DIRECTORY,))
            if path is not None:
                fs.nodes[path].mode = self.draw(st.sampled_from(DIR_MODES + [0o600, 0o000]))
        elif what == "delete":
            path = self.pick((FILE, SYMLINK, DIRECTORY))
            if path is not None:
                for p in fs.under(path):
                    del fs.nodes[p]
        elif what in ("create", "replace"):
            path = self.new_name() if what == "create" else self.pick((FILE, SYMLINK, DIRECTORY))
            if path is None or fs.nodes.get(dp.parent_of(path), Node(FILE, 0)).kind != DIRECTORY:
                return
            for p in fs.under(path):
                del fs.nodes[p]
            kind = self.draw(st.sampled_from([FILE, SYMLINK, DIRECTORY, dp.OTHER]))
            fs.nodes[path] = Node(kind, 0o644 if kind != DIRECTORY else 0o755, 7, 3, b"made",
                                  fs.new_ino(), fs.tick())
        else:  # rename
            path, new = self.pick((FILE, SYMLINK, DIRECTORY)), self.new_name()
            if path is None or new is None or new.startswith(path + b"/") or \
                    fs.nodes.get(dp.parent_of(new), Node(FILE, 0)).kind != DIRECTORY:
                return
            for p in fs.under(path):
                fs.nodes[new + p[len(path):]] = fs.nodes.pop(p)
            fs.tick()


@st.composite
def job_runs(draw: st.DrawFn) -> tuple[Store, FS, dp.TreeState, dict[bytes, dp.Seen], dict[bytes, dp.Seen]]:
    store, fs, state = Store(), FS(), dp.TreeState()
    prepare(fs, state, store, store.build(draw(trees)), draw(st.sampled_from([0, 2 * dp.RACY_NS])))
    recorded = dict(state.stats)
    before = fs.listing()
    job = Job(fs, draw)
    for _ in range(draw(st.integers(0, 8))):
        job.step()
    fs.unseen = job.unseen  # type: ignore[attr-defined]
    return store, fs, state, recorded, before


def watched(store: Store, fs: FS, state: dp.TreeState, before: dict[bytes, dp.Seen],
            extra: set[bytes]) -> tuple[dict[bytes, dp.Seen], set[bytes]]:
    """What the worker learns with inotify: the paths touched, the directories that went
    (their part of the tree is then in scope) and those that came (walked whole), as a
    listing of the scope.  ``extra``: paths the watches also reported (a superset is fine)."""
    after = fs.listing()
    touched = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)} | fs.unseen | extra
    is_dir = {p for p, s in after.items() if dp.kind_of(s[0]) == DIRECTORY}
    gone = {p for p, s in before.items() if dp.kind_of(s[0]) == DIRECTORY and
            (after.get(p) is None or after[p][:2] != s[:2])}
    came = {p for p in is_dir if before.get(p) is None or before[p][:2] != after[p][:2]}
    touched |= {p for p in after for d in came if p.startswith(d + b"/")}
    scope = aj.scope_of(state, touched, gone, store.load)
    return {p: after[p] for p in scope if p in after}, scope


@given(job_runs(), st.data())
@settings(max_examples=400, deadline=None)
def test_looking_only_at_what_the_watches_saw_gives_the_same_results_and_restores_the_tree(
        run: Any, data: st.DataObject) -> None:
    store, fs, state, recorded, before = run
    full = fs.listing()
    extra = set(data.draw(st.lists(st.sampled_from(sorted(full) or [b"a"]), max_size=3)))
    listing, scope = watched(store, fs, state, before, extra)
    assert aj.results(state, listing, scope) == aj.results(state, full)
    plan = aj.restore(state, listing, scope)
    rewritten = {op.path for op in plan.ops if isinstance(op, dp.WriteFile)}
    for path in fs.unseen:  # written in place within a tick: its stat says nothing, the watches do
        entry, now = state.entries.get(path), full.get(path)
        if entry is not None and now is not None and dp.kind_of(now[0]) == entry.kind != DIRECTORY:
            assert path in rewritten
    assert all(op.path in scope or not op.path for op in plan.ops if not isinstance(op, (dp.Unlock, dp.SetMode)))
    stats = fs.run(plan)
    state.apply(plan, stats)
    assert fs.tree() == manifest_view(state.entries)


@given(job_runs())
@settings(max_examples=400, deadline=None)
def test_results_are_those_of_a_full_comparison(run: Any) -> None:
    _store, fs, state, _recorded, _before = run
    listing = fs.listing()
    final = {}
    for path, seen in listing.items():
        kind = dp.kind_of(seen[0])
        if kind == FILE:
            final[path] = Entry(b"", FILE, stat.S_IMODE(seen[0]), seen[3], seen[2])
        elif kind == SYMLINK:
            final[path] = Entry(b"", SYMLINK, 0o777, seen[3], seen[2], b"", seen[5])
        elif kind == DIRECTORY:
            final[path] = Entry(b"", DIRECTORY, stat.S_IMODE(seen[0]), 0)
    assert aj.results(state, listing) == diff(state.entries, final)


@given(job_runs())
@settings(max_examples=400, deadline=None)
def test_a_restore_brings_the_tree_back_and_rewrites_every_touched_file(run: Any) -> None:
    store, fs, state, recorded, before = run
    listing = fs.listing()
    plan = aj.restore(state, listing)
    assert plan.root == state.root and not plan.added and not plan.removed
    for op in plan.ops:  # never in place: a restored file or link is a new one
        assert not isinstance(op, dp.SetAttrs)
    rewritten = {op.path for op in plan.ops if isinstance(op, dp.WriteFile)}
    for path, seen in recorded.items():
        if listing.get(path) != seen or seen[4] >= state.racy_ns:
            assert path in rewritten, path
    fs.run(plan)
    stats = {op.path: fs.nodes[op.path].seen() for op in plan.ops if isinstance(op, dp.WriteFile)}
    state.apply(plan, stats)
    assert fs.tree() == manifest_view(state.entries)
    assert {p: s for p, s in fs.listing().items() if p in state.stats} == state.stats
    assert prepare(fs, state, store, state.root).ops == []  # the next job of the same tree: nothing to do
    assert aj.restore(state, fs.listing()).ops == []
    assert aj.results(state, fs.listing()) == []
    untouched = [p for p, s in recorded.items() if p not in rewritten]
    assert all(fs.nodes[p].seen() == before[p] for p in untouched)  # the rest was left alone


@given(job_runs(), trees)
@settings(max_examples=200, deadline=None)
def test_a_restored_directory_turns_into_the_next_tree(run: Any, next_tree: dict[bytes, Any]) -> None:
    store, fs, state, _recorded, _before = run
    plan = aj.restore(state, fs.listing())
    state.apply(plan, fs.run(plan))
    root = store.build(next_tree)
    prepare(fs, state, store, root)
    assert fs.tree() == manifest_view(dp.flat(root, store.load))
    assert set(state.digests) == expected_digests(store, root)


@given(job_runs(), st.data(), trees)
@settings(max_examples=150, deadline=None)
def test_keeping_what_came_back_then_restoring_gives_that_tree(run: Any, data: st.DataObject,
                                                               next_tree: dict[bytes, Any]) -> None:
    store, fs, state, _recorded, before = run
    listing, scope = watched(store, fs, state, before, set())
    candidates = sorted(path for path in scope if (seen := listing.get(path)) is not None
                        and dp.kind_of(seen[0]) == FILE)
    chosen = data.draw(st.lists(st.sampled_from(candidates), unique=True) if candidates else st.just([]))
    files = {path: Entry(path.rpartition(b"/")[2], FILE, stat.S_IMODE(listing[path][0]), listing[path][3],
                         listing[path][2], fs.nodes[path].data) for path in chosen}
    new_dirs = {}
    for path in chosen:
        parent = dp.parent_of(path)
        while parent and not ((e := state.entries.get(parent)) is not None and e.kind == DIRECTORY):
            new_dirs[parent] = stat.S_IMODE(listing[parent][0])
            parent = dp.parent_of(parent)

    def encode(entries: list[Entry]) -> tuple[bytes, bytes]:
        digest, blob = make_directory(entries)
        store.dirs[digest] = Directory(tuple(sorted(entries, key=lambda e: e.name)))
        return digest, blob

    kept_nodes = {path: fs.nodes[path] for path in chosen}
    plan, blobs = aj.adopt(state, files, new_dirs, store.load, encode)
    assert not plan.ops and set(blobs) <= set(store.dirs)
    state.apply(plan, {path: listing[path] for path in chosen})
    restoring = aj.restore(state, listing, scope - set(chosen))
    state.apply(restoring, fs.run(restoring))
    assert fs.tree() == manifest_view(state.entries) == manifest_view(dp.flat(state.root, store.load))
    assert all(fs.nodes[path] is node for path, node in kept_nodes.items())  # kept, not written again
    assert set(state.digests) == expected_digests(store, state.root)
    root = store.build(next_tree)
    prepare(fs, state, store, root)
    assert fs.tree() == manifest_view(dp.flat(root, store.load))


# --- which directory -----------------------------------------------------------------------------------------------


def _state(store: Store, tree: dict[bytes, Any]) -> dp.TreeState:
    state = dp.TreeState()
    prepare(FS(), state, store, store.build(tree))
    return state


def test_choose_prefers_the_same_tree_then_the_nearest_else_none() -> None:
    store = Store()
    base = {f"d{i}".encode(): (DIRECTORY, 0o755, {b"f": (FILE, 0o644, i % 4, i)}, 0) for i in range(6)}
    same, near = _state(store, base), _state(store, {**base, b"d0": (DIRECTORY, 0o755, {}, 0)})
    other = _state(store, {b"x": (FILE, 0o644, 0, 1)})
    root = store.build(base)
    assert dp.choose(root, [("other", other), ("near", near), ("same", same)], store.dirs.get) == "same"
    assert dp.choose(root, [("other", other), ("near", near)], store.dirs.get) == "near"
    assert dp.choose(root, [("other", other)], store.dirs.get) is None
    assert dp.choose(root, [], store.dirs.get) is None
    assert dp.choose(store.build({}), [("near", near)], store.dirs.get) is None  # nothing shared: a fresh one
    # one directory of many files all changed, nine of many files alike: the parked one is the nearer
    many = {f"d{i}".encode(): (DIRECTORY, 0o755, {f"f{j}".encode(): (FILE, 0o644, 0, j) for j in range(30)}, 0)
            for i in range(10)}
    parked = _state(store, many)
    many[b"d0"] = (DIRECTORY, 0o755, {f"f{j}".encode(): (FILE, 0o644, 1, j) for j in range(30)}, 0)
    assert dp.choose(store.build(many), [("parked", parked)], store.dirs.get) == "parked"


@pytest.mark.parametrize("target", [b"../../x", b"/etc", b"a/../../../x"])
def test_a_symlink_leading_out_is_refused_after_a_transform(target: bytes) -> None:
    store, fs, state = Store(), FS(), dp.TreeState()
    root = store.build({b"d": (DIRECTORY, 0o755, {b"l": (SYMLINK, target, 0, 1)}, 0)})
    plan = prepare(fs, state, store, root)
    assert plan.links_changed
    with pytest.raises(dp.BadManifest):
        state.check_links()
