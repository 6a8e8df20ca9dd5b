"""The worker's blob cache: LRU eviction within the bound, never a pinned blob (pure, then on disk)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging.blobstore import BadBlob, BlobStore, CacheBusy
from jobqueue.staging.cachepolicy import CachePolicy
from jobqueue.staging.manifest import digest_of

blobs = st.sampled_from([bytes([i]) * 32 for i in range(8)])
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), blobs, st.integers(0, 40)),
    st.tuples(st.just("use"), blobs, st.just(0)),
    st.tuples(st.just("pin"), st.sampled_from(["j1", "j2"]), st.lists(blobs, max_size=3)),
    st.tuples(st.just("unpin"), st.sampled_from(["j1", "j2"]), st.just(0)),
), max_size=60)


@given(st.integers(0, 100), ops)
@settings(max_examples=400)
def test_eviction_is_lru_bounded_and_spares_pinned_blobs(capacity: int, steps: list[tuple]) -> None:
    policy = CachePolicy(capacity)
    model: list[bytes] = []  # least recently used first
    sizes: dict[bytes, int] = {}
    pins: dict[str, set[bytes]] = {}
    for op, a, b in steps:
        evicted: list[bytes] = []
        if op == "add":
            if a in sizes:
                model.remove(a)
            else:
                sizes[a] = b
            model.append(a)
            evicted = policy.add(a, b)
        elif op == "use":
            if a in sizes:
                model.remove(a)
                model.append(a)
            policy.use(a)
        elif op == "pin":
            pins.setdefault(a, set()).update(b)
            for d in b:
                if d in sizes:
                    model.remove(d)
                    model.append(d)
            policy.pin(a, b)
        else:
            pins.pop(a, None)
            evicted = policy.unpin(a)
        pinned = set().union(*pins.values()) if pins else set()
        assert not set(evicted) & pinned
        for d in evicted:
            # only blobs older than every unpinned survivor go
            assert all(model.index(d) < model.index(s) for s in model if s not in pinned and s not in evicted)
            model.remove(d)
            del sizes[d]
        assert sorted(model) == sorted(d for d in sizes)
        assert policy.total == sum(sizes.values())
        assert policy.total <= capacity or all(d in pinned for d in model)


park_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), blobs, st.integers(0, 40)),
    st.tuples(st.just("pin"), st.sampled_from(["j1", "dir:a", "dir:b"]), st.lists(blobs, max_size=3)),
    st.tuples(st.just("unpin"), st.sampled_from(["j1", "dir:a", "dir:b"]), st.just(0)),
    st.tuples(st.just("release"), st.sampled_from(["j1", "dir:a"]), st.lists(blobs, max_size=2)),
    st.tuples(st.just("park"), st.sampled_from(["dir:a", "dir:b"]), st.integers(0, 60)),
    st.tuples(st.just("unpark"), st.sampled_from(["dir:a", "dir:b"]), st.just(0)),
), max_size=60)


@given(st.integers(0, 150), st.integers(0, 2), park_ops)
@settings(max_examples=400)
def test_parked_directories_are_items_that_keep_their_blobs_until_evicted(capacity: int, max_parked: int,
                                                                          steps: list[tuple]) -> None:
    policy = CachePolicy(capacity, max_parked)
    sizes: dict[bytes | str, int] = {}
    pins: dict[str, set[bytes]] = {}
    for op, a, b in steps:
        evicted: list[bytes | str] = []
        if op == "add":
            sizes.setdefault(a, b)
            evicted = policy.add(a, b)
        elif op == "pin":
            pins.setdefault(a, set()).update(b)
            policy.pin(a, b)
        elif op == "unpin":
            pins.pop(a, None)
            evicted = policy.unpin(a)
        elif op == "release":
            pins.get(a, set()).difference_update(b)
            evicted = policy.release(a, b)
        elif op == "park":
            sizes[a] = b
            evicted = policy.park(a, b)
        else:
            sizes.pop(a, None)
            policy.unpark(a)
        pinned_before = set().union(*pins.values()) if pins else set()
        for key in evicted:
            if isinstance(key, str):  # a parked directory goes with its pins
                pins.pop(key, None)
        pinned = set().union(*pins.values()) if pins else set()
        for key in evicted:
            assert key not in pinned  # never a blob someone still needs
            if isinstance(key, bytes) and key in pinned_before:
                assert any(isinstance(k, str) for k in evicted)  # only once the directory pinning it went
            del sizes[key]
        assert policy.total == sum(sizes.values())
        assert policy.parked == sum(isinstance(k, str) for k in sizes) <= max_parked
        assert policy.pinned_bytes == sum(n for k, n in sizes.items() if isinstance(k, bytes) and k in pinned)
        assert policy.total <= capacity or all(isinstance(k, bytes) and k in pinned for k in sizes)
        assert len(policy) == sum(isinstance(k, bytes) for k in sizes)


def test_a_directory_that_cannot_fit_goes_at_once_and_takes_no_blob_with_it() -> None:
    old, mine = bytes([1]) * 32, bytes([2]) * 32
    policy = CachePolicy(100, max_parked=2)
    policy.add(old, 40)
    policy.add(mine, 40)
    policy.pin("dir:x", [mine])
    assert policy.park("dir:x", 70) == ["dir:x"]  # 40 pinned + 70 > 100: the older blob stays
    assert old in policy and mine in policy and policy.unpin("dir:x") == []
    policy.pin("dir:y", [mine])
    assert policy.park("dir:y", 50) == [old]  # fits once the older blob goes: LRU
    assert policy.park("dir:z", 0) == [] and policy.park("dir:w", 0) == ["dir:y"]  # at most two parked


def _put(store: BlobStore, data: bytes) -> bytes:
    digest = digest_of(data)
    writer = store.writer(digest, len(data))
    writer.write(data[:3])
    writer.write(data[3:])
    writer.finish()
    return digest


def test_store_keeps_blobs_whole_evicts_files_and_survives_a_restart(tmp_path) -> None:
    store = BlobStore(str(tmp_path / "c"), capacity=25)
    one = _put(store, b"1" * 10)
    store.pin("job", [one])
    two = _put(store, b"2" * 10)
    three = _put(store, b"3" * 10)  # over the bound: two goes, one is pinned
    assert store.has(one) and not store.has(two) and store.has(three)
    assert not os.path.exists(store.path(two))
    with open(store.path(one), "rb") as f:
        assert f.read() == b"1" * 10
    store.unpin("job")
    four = _put(store, b"4" * 10)  # now one, the least recently used, goes
    assert not store.has(one) and not os.path.exists(store.path(one)) and store.has(four)
    with pytest.raises(CacheBusy):
        BlobStore(str(tmp_path / "c"), capacity=25)
    store.close()
    again = BlobStore(str(tmp_path / "c"), capacity=25)
    assert again.has(three) and not again.has(one)
    again.close()


def test_a_blob_that_does_not_match_its_digest_is_not_stored(tmp_path) -> None:
    store = BlobStore(str(tmp_path / "c"), capacity=1000)
    digest = digest_of(b"right")
    writer = store.writer(digest, 5)
    writer.write(b"wrong")
    with pytest.raises(BadBlob):
        writer.finish()
    leftovers = os.path.dirname(store.path(digest))
    assert not store.has(digest) and os.listdir(leftovers) == []
    writer = store.writer(digest, 5)
    with pytest.raises(BadBlob):
        writer.write(b"too long")
    assert os.listdir(leftovers) == []


def test_pinning_a_blob_again_makes_it_the_most_recently_used() -> None:
    """Found by the property test above: a job that pins a blob it already pinned
    needs it now, so that blob is the last to go once the pins are dropped."""
    a, z = bytes([3]) * 32, bytes(32)
    policy = CachePolicy(1)
    policy.add(a, 1)
    policy.pin("j1", [z, a])
    policy.add(z, 1)
    policy.pin("j1", [a])
    assert policy.unpin("j1") == [z]


def test_a_pushed_blob_is_in_the_cache_at_once_and_its_file_comes_whole_later(tmp_path) -> None:
    """Blobs that came with a job are held in memory until their files are written (after the
    job started): readers see them meanwhile, a crash leaves no file (and a restart no blob)."""
    store = BlobStore(str(tmp_path / "c"), capacity=1000)
    one, two = digest_of(b"1" * 10), digest_of(b"2" * 10)
    assert not store.accept(one, b"not it")  # bytes that are not the blob are left out
    assert store.accept(one, b"1" * 10) and store.accept(two, b"2" * 10)
    assert store.has(one) and store.read(one) == b"1" * 10 and not os.path.exists(store.path(one))
    assert store.accept(one, b"1" * 10)  # again: nothing changes
    store.close()
    crashed = BlobStore(str(tmp_path / "c"), capacity=1000)  # as after a crash before the files were written
    assert not crashed.has(one) and not crashed.has(two)
    crashed.close()
    store = BlobStore(str(tmp_path / "c"), capacity=1000)
    store.accept(one, b"1" * 10)
    blobs = dict(store.unwritten)
    assert store.write_unwritten(blobs) == []
    store.written(blobs, [])
    assert store.unwritten == {} and store.has(one)
    with open(store.path(one), "rb") as f:
        assert f.read() == b"1" * 10
    assert [name for name in os.listdir(os.path.dirname(store.path(one))) if name.startswith(".")] == []


def test_a_pushed_blob_evicted_or_not_written_leaves_no_file_and_no_entry(tmp_path) -> None:
    store = BlobStore(str(tmp_path / "c"), capacity=25)
    one, two, three = digest_of(b"1" * 10), digest_of(b"2" * 10), digest_of(b"3" * 10)
    store.accept(one, b"1" * 10)
    store.accept(two, b"2" * 10)
    blobs = dict(store.unwritten)
    assert store.write_unwritten(blobs) == []  # (off the loop) ...
    store.accept(three, b"3" * 10)  # ... while on the loop the bound evicts one
    assert not store.has(one) and one not in store.unwritten
    store.written(blobs, [])  # its file came after the eviction: it goes
    assert not os.path.exists(store.path(one)) and os.path.exists(store.path(two)) and store.has(two)
    store.written([three], [three])  # could not be written: no longer in the cache
    assert not store.has(three) and three not in store.unwritten and store.policy.total == 10
