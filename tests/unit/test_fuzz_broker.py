"""Hostile input never crashes the broker: it answers with a clear rejection."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobqueue import protocol as p
from jobqueue.broker import Broker

TAGS = ["hello", "whello", "ping", "submit", "in", "ack", "signal", "resize", "release", "started", "out",
        "finished", "reject", "goodbye", "drain", "status", "cancel", "drainr", "bye", "nope"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5),
                                                                                          inner, max_size=3),
                      max_leaves=10)
shaped = st.builds(lambda tag, rest: msgspec.msgpack.encode([tag, *rest]), st.sampled_from(TAGS),
                   st.lists(values, max_size=8))


def _broker_with_peers() -> Broker:
    b = Broker(0.0, restart_hold=0.0)
    b.receive(b"c", p.encode(p.ClientHello(p.PROTOCOL_VERSION, "S1")), 0.0)
    b.receive(b"w", p.encode(p.WorkerHello(p.PROTOCOL_VERSION, "S2", "w", "h", 1, "0", 2)), 0.0)
    b.receive(b"c", p.encode(p.Submit("j", p.JobSpec([b"true"], {}, b"/"))), 0.0)
    return b


def _check(b: Broker, peer: bytes, data: bytes) -> None:
    for send in b.receive(peer, data, 1.0):
        assert isinstance(send.message, (p.Message, bytes))
    b.tick(2.0)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(peer=st.sampled_from([b"c", b"w", b"x"]), data=st.binary(max_size=200))
def test_random_bytes(peer: bytes, data: bytes) -> None:
    _check(_broker_with_peers(), peer, data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(peer=st.sampled_from([b"c", b"w", b"x"]), data=shaped)
def test_well_formed_msgpack_with_wrong_shapes(peer: bytes, data: bytes) -> None:
    _check(_broker_with_peers(), peer, data)


def test_malformed_message_gets_clear_error() -> None:
    b = _broker_with_peers()
    out = b.receive(b"c", msgspec.msgpack.encode(["submit", "j2", "not-a-spec"]), 1.0)
    assert isinstance(out[0].message, p.Error)
    assert "malformed message for the server" in out[0].message.reason


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(-(2**63), 2**63 - 1), size=st.integers(-(2**31), 2**31))
def test_negative_or_huge_numbers(offset: int, size: int) -> None:
    b = _broker_with_peers()
    for msg in (p.Ack("j", 1, 1, offset), p.Resize("j", size, size), p.Signal("j", size)):
        _check(b, b"c", p.encode(msg))
