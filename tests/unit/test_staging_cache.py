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
