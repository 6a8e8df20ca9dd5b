"""The manifest: canonical encoding round-trips, validation refuses what could escape, missing() finds gaps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging import entry as lean
from jobqueue.staging import manifest as m

names = st.binary(min_size=1, max_size=20).filter(lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n)
digests = st.binary(min_size=32, max_size=32)


@st.composite
def entries(draw: st.DrawFn) -> m.Entry:
    kind = draw(st.sampled_from(m.KINDS))
    name = draw(names)
    mode = draw(st.integers(0, 0o7777))
    mtime = draw(st.integers(-(2**62), 2**62))
    if kind == m.SYMLINK:
        target = draw(st.binary(min_size=1, max_size=30).filter(lambda t: b"\0" not in t))
        return m.Entry(name, kind, mode, mtime, len(target), b"", target)
    return m.Entry(name, kind, mode, mtime, draw(st.integers(0, 2**40)), draw(digests))


@given(st.lists(entries(), max_size=30, unique_by=lambda e: e.name))
@settings(max_examples=300)
def test_directories_round_trip_canonically(items: list[m.Entry]) -> None:
    digest, data = m.make_directory(items)
    decoded = m.decode_directory(data, digest)
    assert list(decoded.entries) == sorted(items, key=lambda e: e.name)
    # the encoding does not depend on the order entries came in
    assert m.make_directory(list(reversed(items))) == (digest, data)
    assert m.encode_directory(decoded) == data


@given(st.lists(entries(), max_size=30, unique_by=lambda e: e.name))
@settings(max_examples=300)
def test_the_clients_lean_encoding_is_msgspecs_byte_for_byte(items: list[m.Entry]) -> None:
    """jq encodes directories without msgspec (jobqueue.staging.entry); the worker decodes with it."""
    tuples = [(e.name, e.kind, e.mode, e.mtime_ns, e.size, e.digest, e.target) for e in items]
    assert lean.make_directory(tuples) == m.make_directory(items)


@given(st.lists(entries(), min_size=2, max_size=10, unique_by=lambda e: e.name))
def test_unsorted_or_repeated_names_are_refused(items: list[m.Entry]) -> None:
    ordered = sorted(items, key=lambda e: e.name)
    with pytest.raises(m.BadManifest):
        m.decode_directory(m.encode_directory(m.Directory(tuple(reversed(ordered)))))
    with pytest.raises(m.BadManifest):
        m.decode_directory(m.encode_directory(m.Directory((ordered[0], ordered[0]))))


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/etc", b"a\0b"])
def test_unsafe_names_are_refused(name: bytes) -> None:
    data = m.encode_directory(m.Directory((m.Entry(name, m.FILE, 0o644, 0, 0, b"x" * 32),)))
    with pytest.raises(m.BadManifest):
        m.decode_directory(data)


@pytest.mark.parametrize("entry", [
    m.Entry(b"f", 7, 0o644, 0, 0, b"x" * 32),  # unknown kind
    m.Entry(b"f", m.FILE, 0o10000, 0, 0, b"x" * 32),  # mode beyond the permission bits
    m.Entry(b"f", m.FILE, 0o644, 0, 0, b"short"),  # digest of the wrong size
    m.Entry(b"f", m.FILE, 0o644, 0, -1, b"x" * 32),  # negative size
    m.Entry(b"l", m.SYMLINK, 0o777, 0, 0, b"", b""),  # symlink without target
    m.Entry(b"l", m.SYMLINK, 0o777, 0, 0, b"x" * 32, b"t"),  # symlink with a digest
])
def test_malformed_entries_are_refused(entry: m.Entry) -> None:
    with pytest.raises(m.BadManifest):
        m.decode_directory(m.encode_directory(m.Directory((entry,))))


def test_garbage_and_wrong_digest_are_refused() -> None:
    with pytest.raises(m.BadManifest):
        m.decode_directory(b"\x93garbage")
    digest, data = m.make_directory([m.Entry(b"a", m.FILE, 0o644, 1, 1, b"y" * 32)])
    with pytest.raises(m.BadManifest):
        m.decode_directory(data, b"\0" * 32)


def _tree() -> tuple[bytes, dict[bytes, bytes], dict[str, bytes]]:
    blob_a, blob_b = m.digest_of(b"a"), m.digest_of(b"b")
    sub, sub_data = m.make_directory([m.Entry(b"b", m.FILE, 0o644, 1, 1, blob_b)])
    root, root_data = m.make_directory([
        m.Entry(b"a", m.FILE, 0o755, 1, 1, blob_a),
        m.Entry(b"sub", m.DIRECTORY, 0o755, 0, 0, sub),
        m.Entry(b"link", m.SYMLINK, 0o777, 1, 3, b"", b"sub/b"),
    ])
    return root, {root: root_data, sub: sub_data}, {"a": blob_a, "b": blob_b, "sub": sub}


def test_walk_lists_every_path_parents_first() -> None:
    root, dirs, _ = _tree()
    paths = [p for p, _ in m.walk(root, dirs)]
    assert sorted(paths) == [b"a", b"link", b"sub", b"sub/b"]
    assert paths.index(b"sub") < paths.index(b"sub/b")
    assert set(m.check_tree(root, dirs)) == set(paths)


def test_missing_descends_level_by_level_and_names_what_to_pin() -> None:
    root, dirs, blobs = _tree()
    have: dict[bytes, bytes] = {}
    need, _ = m.missing(root, have.__contains__, have.__getitem__)
    assert need == [root]
    have[root] = dirs[root]
    need, seen = m.missing(root, have.__contains__, have.__getitem__)
    assert set(need) == {blobs["a"], blobs["sub"]}
    have[blobs["sub"]] = dirs[blobs["sub"]]
    have[blobs["a"]] = b"a"
    need, seen = m.missing(root, have.__contains__, have.__getitem__)
    assert need == [blobs["b"]]
    assert seen == {root, blobs["a"], blobs["b"], blobs["sub"]}
    have[blobs["b"]] = b"b"
    assert m.missing(root, have.__contains__, have.__getitem__)[0] == []


_shapes = st.recursive(st.sampled_from([b"x", b"y", b"z"]),
                       lambda inner: st.dictionaries(st.sampled_from([b"a", b"b", b"c", b"d"]), inner, max_size=4),
                       max_leaves=12)


def _encode(shape: bytes | dict[bytes, object], dirs: dict[bytes, bytes]) -> tuple[bytes, int]:
    """(digest, kind) of a file (bytes) or directory (dict) shape; directories' encodings go into ``dirs``."""
    if isinstance(shape, bytes):
        return m.digest_of(shape), m.FILE
    items = []
    for name, child in shape.items():
        digest, kind = _encode(child, dirs)  # type: ignore[arg-type]
        items.append(m.Entry(name, kind, 0o755, 1, 0, digest))
    items.append(m.Entry(b"l", m.SYMLINK, 0o777, 1, 1, b"", b"a"))
    digest, data = m.make_directory(items)
    dirs[digest] = data
    return digest, m.DIRECTORY


@given(st.dictionaries(st.sampled_from([b"a", b"b", b"c"]), _shapes, max_size=3), st.data())
@settings(max_examples=300)
def test_a_walk_with_a_narrower_complete_goes_on(shape: dict[bytes, object], data: st.DataObject) -> None:
    """The worker's two walks (any directory of ours, then the chosen one): the second looks only
    into what the first skipped and finds what a whole walk would."""
    dirs: dict[bytes, bytes] = {}
    root, _ = _encode(shape, dirs)
    files = {m.digest_of(content) for content in (b"x", b"y", b"z")}
    absent = data.draw(st.sets(st.sampled_from(sorted(files | set(dirs))), max_size=2))
    have = lambda digest: digest not in absent  # noqa: E731
    known = data.draw(st.sets(st.sampled_from(sorted(dirs))))
    held = data.draw(st.sets(st.sampled_from(sorted(known)))) if known else set()
    skipped: list[bytes] = []
    need, seen = m.missing(root, have, dirs.__getitem__, known.__contains__, skipped)
    assert not set(skipped) - known and not seen & known
    whole_need, whole_seen = m.missing(root, have, dirs.__getitem__, held.__contains__)
    if need:
        return  # the worker asks for these first, and walks again once they came
    more_need, more_seen = m.missing_below(skipped, seen, have, dirs.__getitem__, held.__contains__)
    assert sorted(more_need) == sorted(whole_need)
    assert seen | more_seen == whole_seen and not seen & more_seen


def test_a_symlink_leading_out_of_the_tree_is_refused() -> None:
    root, data = m.make_directory([m.Entry(b"l", m.SYMLINK, 0o777, 1, 5, b"", b"../x")])
    with pytest.raises(m.BadManifest, match="outside"):
        m.check_tree(root, {root: data})


def test_small_hashing_needs_no_openssl_and_gives_the_same_digests() -> None:
    """jq hashes its first megabyte with Python's own SHA-256 (OpenSSL costs 3-10 ms to load)."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys; from jobqueue.staging import entry; "
            "d = entry.digest_of(b'x' * 1000); h = entry.hasher_for(3); h.update(b'abc'); "
            "print(d.hex(), h.digest().hex(), '_hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [hashlib.sha256(b"x" * 1000).hexdigest(), hashlib.sha256(b"abc").hexdigest(), "False"]
    big = lean.hasher_for(lean.SMALL_HASHING + 1)
    big.update(b"abc")
    assert big.digest() == hashlib.sha256(b"abc").digest() and type(big).__module__ == "_hashlib"
