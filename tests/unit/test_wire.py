"""The lean client's messages (:mod:`jobqueue.wire`) agree with msgspec's (:mod:`jobqueue.protocol`):
same fields and defaults, byte-identical encodings, equal decodings both ways, and
the same inputs accepted; anything malformed raises :class:`wire.ProtocolError`."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import protocol as p
from jobqueue import wire as w

CLASSES = [*w.MESSAGES, w.JobSpec, w.ResultEntry]

ints = st.integers(-(2**63), 2**64 - 1)
texts = st.text(max_size=40)
floats = st.floats(allow_nan=False)
FIELD_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    w._int: ints, w._str: texts, w._bool: st.booleans(), w._bytes: st.binary(max_size=300),
    w._float: floats, w._float_or_none: st.none() | floats, w._str_list: st.lists(texts, max_size=20),
    w._int_list: st.lists(ints, max_size=5), w._int_or_none: st.none() | ints,
    w._bytes_list: st.lists(st.binary(max_size=40), max_size=20),
    w._bytes_map: st.dictionaries(st.binary(max_size=20), st.binary(max_size=40), max_size=20),
    w._rlimit_list: st.lists(st.tuples(texts, ints, ints), max_size=12),
    w._int_map: st.dictionaries(texts, ints, max_size=5),
    w._blob_list: st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=100)), max_size=5),
}


def _instance(cls: type[w.Struct]) -> st.SearchStrategy[w.Struct]:
    def field(check: Any) -> st.SearchStrategy[Any]:
        if check is w._job_spec:
            return _instance(w.JobSpec)
        if check is w._result_entries:
            return st.lists(_instance(w.ResultEntry), max_size=4)
        return FIELD_VALUES[check]

    strategies = [field(check) for _name, check, _default in cls.FIELDS]
    return st.tuples(*strategies).map(lambda values: cls(*values))


def _to_msgspec(value: Any) -> Any:
    """The protocol struct with the same values as a wire struct."""
    if isinstance(value, w.Struct):
        return getattr(p, type(value).__name__)(*[_to_msgspec(v) for v in value.values()])
    if isinstance(value, list):
        return [_to_msgspec(v) for v in value]
    return value


def _from_msgspec(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        fields = [getattr(value, f.name) for f in msgspec.structs.fields(value)]
        return getattr(w, type(value).__name__)(*[_from_msgspec(v) for v in fields])
    if isinstance(value, list):
        return [_from_msgspec(v) for v in value]
    return value


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_order_defaults_and_tag_match_the_protocol(cls: type[w.Struct]) -> None:
    theirs = getattr(p, cls.__name__)
    expected = [(f.name, f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default)
                for f in msgspec.structs.fields(theirs)]
    ours = [(name, w._REQUIRED if default is w._REQUIRED else default) for name, _check, default in cls.FIELDS]
    assert [name for name, _ in ours] == [name for name, _ in expected]
    for (name, default), (_, their_default) in zip(ours, expected):
        assert (default is w._REQUIRED) == (their_default is msgspec.NODEFAULT), name
        if default is not w._REQUIRED:
            assert default == their_default and type(default) is type(their_default), name
    tag = theirs.__struct_config__.tag
    assert (tag or "") == cls.TAG, cls


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = w.Finished("j", 1, 0, "exited"), w.Finished("j", 1, 0, "exited")
    a.offsets.append(5)
    assert b.offsets == [0, 0]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(w.MESSAGES).flatmap(_instance))
def test_random_messages_encode_identically_and_decode_both_ways(message: w.Message) -> None:
    theirs = _to_msgspec(message)
    data = w.encode(message)
    assert data == p.encode(theirs)
    assert msgspec.msgpack.decode(data, type=type(theirs)) == theirs
    assert w.decode_any(p.encode(theirs)) == message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(w.MESSAGES).flatmap(_instance), st.integers(0, 10))
def test_missing_trailing_defaults_are_filled_in_as_msgspec_does(message: w.Message, keep: int) -> None:
    required = sum(1 for field in message.FIELDS if field[2] is w._REQUIRED)
    items = [message.TAG, *message.values()[:max(required, keep)]]
    data = msgspec.msgpack.encode([_to_msgspec(item) for item in items])
    theirs = msgspec.msgpack.decode(data, type=getattr(p, type(message).__name__))
    assert w.decode_any(data) == _from_msgspec(theirs)


CLIENT_TAGS = ["welcome", "pong", "unknown", "refused", "error", "queued", "started", "out", "ack", "requeued",
               "finished", "hello", "nope"]
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=8), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(scalars.filter(lambda v: v == v), inner, max_size=3), max_leaves=8)
shaped = st.builds(lambda tag, rest: msgspec.msgpack.encode([tag, *rest]), st.sampled_from(CLIENT_TAGS),
                   st.lists(values, max_size=8))


def _accepts(decode: Any, data: bytes) -> tuple[bool, Any]:
    try:
        return True, decode(data)
    except (p.ProtocolError, w.ProtocolError):
        return False, None


@settings(max_examples=1000, deadline=None)
@given(shaped)
def test_same_messages_accepted_as_msgspec(data: bytes) -> None:
    ok_theirs, theirs = _accepts(p.decode_to_client, data)
    ok_ours, ours = _accepts(w.decode_to_client, data)
    assert ok_ours == ok_theirs, (data, theirs)
    if ok_ours:  # NaN-safe comparison: the same values encode to the same bytes
        assert w.encode(ours) == p.encode(theirs)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        w.decode_to_client(data)
    except w.ProtocolError as e:
        assert "malformed message for the client" in str(e)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(w.MESSAGES).flatmap(_instance), st.data())
def test_truncated_or_extended_messages_are_refused(message: w.Message, data: st.DataObject) -> None:
    encoded = w.encode(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(w.ProtocolError, match="truncated"):
        w.decode_any(encoded[:cut])
    with pytest.raises(w.ProtocolError, match="trailing bytes"):
        w.decode_any(encoded + b"\xc0")


@pytest.mark.parametrize("data, error", [
    (b"\x91\xa5error", "at least 1 fields, got 0"),
    (b"\x92\xa5error\x01", "field 'reason' must be str, got int"),
    (b"\x91\xa7statusr", "unexpected message type 'statusr'"),
    (b"\x80", "expected a non-empty array, got map"),
    (b"\x92\xa5error\xd4\x01\x01", "unsupported MessagePack type 0xd4"),
    (b"\x92\xa5error\xa2\xff\xfe", "not valid UTF-8"),
    (b"\x91" * 100 + b"\xc0", "nested too deeply"),
])
def test_errors_say_what_is_wrong(data: bytes, error: str) -> None:
    with pytest.raises(w.ProtocolError, match=error):
        w.decode_to_client(data)


# --- the vocabulary: every message a client sends or receives is mirrored ------------------------

#: Replies only the control commands (jobqueue status/cancel/drain) read: they use msgspec.
CONTROL_ONLY = {"statusr", "controlr"}


def _tag(cls: type) -> str:
    return str(cls.__struct_config__.tag)


def test_every_message_a_client_receives_is_mirrored() -> None:
    theirs = {_tag(cls) for cls in p.ToClient.__args__} - CONTROL_ONLY  # type: ignore[attr-defined]
    assert theirs == set(w._TO_CLIENT)


def test_every_message_the_broker_takes_from_a_client_is_mirrored() -> None:
    from jobqueue.broker import Broker

    handled = {_tag(cls) for cls in Broker(0.0)._client_handlers} | {_tag(p.ClientHello)}
    assert handled <= {cls.TAG for cls in w.MESSAGES}


WIRE_TYPES = {w._int: int, w._str: str, w._bool: bool, w._bytes: bytes, w._float: float,
              w._float_or_none: float | None, w._str_list: list[str], w._int_list: list[int],
              w._bytes_list: list[bytes], w._bytes_map: dict[bytes, bytes], w._int_or_none: int | None,
              w._rlimit_list: list[tuple[str, int, int]], w._int_map: dict[str, int],
              w._blob_list: list[tuple[bytes, bytes]],
              w._job_spec: p.JobSpec, w._result_entries: list[p.ResultEntry]}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_field_types_match_the_protocol(cls: type[w.Struct]) -> None:
    import typing

    hints = typing.get_type_hints(getattr(p, cls.__name__))
    for name, check, _default in cls.FIELDS:
        assert WIRE_TYPES[check] == hints[name], name


def test_job_spec_carries_any_bytes_exactly() -> None:
    """argv, environment and directory are bin: bytes that are not UTF-8 travel as they are."""
    spec = w.JobSpec([b"printf", b"%s|", b"\xff\xfe", b"caf\xe9", b""], {b"V\xe9": b"a=b\xff", b"E": b""},
                     b"/tmp/\xe9t\xe9", umask=0o27, rlimits=[("nofile", 1024, 4096), ("core", 0, -1)], nice=5,
                     ignored_signals=[2], blocked_signals=[10], closed_fds=[1], merge_output=True)
    submit = w.Submit("j1", spec)
    data = w.encode(submit)
    assert data == p.encode(_to_msgspec(submit))
    theirs = p.decode_to_server(data)
    assert isinstance(theirs, p.Submit) and theirs.spec.argv[2] == b"\xff\xfe"
    assert theirs.spec.env[b"V\xe9"] == b"a=b\xff"
    assert w.decode_any(data) == submit


def test_close_output_is_a_client_message_the_server_and_worker_decode() -> None:
    data = w.encode(w.CloseOutput("j1", 2, 1))
    assert p.decode_to_server(data) == p.CloseOutput("j1", 2, 1)
    assert p.decode_to_worker(data) == p.CloseOutput("j1", 2, 1)
