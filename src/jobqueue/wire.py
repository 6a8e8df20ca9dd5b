"""The client's side of the wire protocol, without msgspec: ``jq`` loads it on every job.

Each class here mirrors the msgspec struct of the same name in
:mod:`jobqueue.protocol` (same fields, order, defaults) and encodes to the
same bytes: a MessagePack array ``[tag, field, ...]`` holding every field,
defaults included.  Decoding checks each field's type as msgspec does (ints
are accepted for floats; trailing fields with defaults may be missing; extra
trailing elements are ignored) and raises :class:`ProtocolError` otherwise.
``tests/unit/test_wire.py`` proves the two agree.

The protocol's shared constants live here, so :mod:`jobqueue.protocol` and
the lean client define them once.
"""

from __future__ import annotations

from _struct import pack as pack_bytes  # not struct: its wrapper module costs jq 0.1 ms
from _struct import unpack as unpack_bytes

#: Bumped on every incompatible change.  Hellos carry it first so a mismatch
#: can be reported even when the rest of the message does not decode.
#: 3: a job's argv, environment and directory are bytes (bin), not str.
PROTOCOL_VERSION = 3

#: Largest message a socket accepts (ZMQ_MAXMSGSIZE); bigger ones drop the peer.
#: Linux caps a program's arguments and environment at 6 MiB (a quarter of the
#: stack limit, at most three quarters of 8 MiB): any command that can run fits.
MAX_MESSAGE_SIZE = 8 << 20
#: Largest payload of one Output/Input message.
CHUNK_SIZE = 256 * 1024
#: Unacknowledged bytes a sender may have in flight per stream (flow control).
WINDOW = 2 * 1024 * 1024

STDIN, STDOUT, STDERR = 0, 1, 2
#: The streams of ``jq --stage``: blobs to the worker, results back to the client.
STAGE_IN, RESULTS = 3, 4
#: The most bytes of blobs a staged job's spec carries (JobSpec.stage_push).
MAX_STAGE_PUSH = 256 * 1024


class ProtocolError(Exception):
    """A message that does not follow this protocol."""


# --- field types -------------------------------------------------------------------------


class _Mismatch(Exception):
    """A decoded value is not of its field's type (``args[0]`` names the type)."""


def _int(value: object) -> int:
    if type(value) is not int:
        raise _Mismatch("int")
    return value


def _str(value: object) -> str:
    if type(value) is not str:
        raise _Mismatch("str")
    return value


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise _Mismatch("bool")
    return value


def _bytes(value: object) -> bytes:
    if type(value) is not bytes:
        raise _Mismatch("bytes")
    return value


def _float(value: object) -> float:
    if type(value) is not float and type(value) is not int:
        raise _Mismatch("float")
    return float(value)


def _float_or_none(value: object) -> float | None:
    return None if value is None else _float(value)


def _int_or_none(value: object) -> int | None:
    return None if value is None else _int(value)


def _str_list(value: object) -> list[str]:
    if type(value) is not list:
        raise _Mismatch("array of str")
    return [_str(item) for item in value]


def _int_list(value: object) -> list[int]:
    if type(value) is not list:
        raise _Mismatch("array of int")
    return [_int(item) for item in value]


def _bytes_list(value: object) -> list[bytes]:
    if type(value) is not list:
        raise _Mismatch("array of bytes")
    return [_bytes(item) for item in value]


def _bytes_map(value: object) -> dict[bytes, bytes]:
    if type(value) is _Pairs and all(type(k) is bytes and type(v) is bytes for k, v in value):
        return {_bytes(k): _bytes(v) for k, v in value}
    raise _Mismatch("map of bytes to bytes")


def _rlimit_list(value: object) -> list[tuple[str, int, int]]:
    if type(value) is not list or not all(type(item) is list and len(item) == 3 for item in value):
        raise _Mismatch("array of (str, int, int)")
    return [(_str(name), _int(soft), _int(hard)) for name, soft, hard in value]


def _blob_list(value: object) -> list[tuple[bytes, bytes]]:
    if type(value) is not list or not all(type(item) is list and len(item) == 2 for item in value):
        raise _Mismatch("array of (bin, bin)")
    return [(_bytes(digest), _bytes(data)) for digest, data in value]


def _int_map(value: object) -> dict[str, int]:
    if type(value) is _Pairs and all(type(k) is str and type(v) is int for k, v in value):
        return {_str(k): _int(v) for k, v in value}
    raise _Mismatch("map of str to int")


def _result_entries(value: object) -> list[ResultEntry]:
    if type(value) is not list:
        raise _Mismatch("list[ResultEntry]")
    entries = []
    for item in value:
        if type(item) is not list:
            raise _Mismatch("list[ResultEntry]")
        entries.append(ResultEntry._from_fields(item, "ResultEntry"))
    return entries  # type: ignore[return-value]


def _job_spec(value: object) -> JobSpec:
    if type(value) is not list:
        raise _Mismatch("JobSpec array")
    spec = JobSpec._from_fields(value, "JobSpec")
    assert isinstance(spec, JobSpec)
    return spec


_REQUIRED = object()


# --- messages ------------------------------------------------------------------------------


class Struct:
    """A record encoded as a MessagePack array of its fields (``TAG`` first, if any).

    ``FIELDS`` lists ``(name, check, default)``; a default of ``_REQUIRED``
    makes the field mandatory, a list default is copied for each instance."""

    __slots__ = ()
    TAG = ""
    FIELDS: tuple[tuple[str, object, object], ...] = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        if len(args) > len(self.FIELDS):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.FIELDS)} fields, got {len(args)}")
        for i, (name, _check, default) in enumerate(self.FIELDS):
            if i < len(args):
                value = args[i]
            elif name in kwargs:
                value = kwargs.pop(name)
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__} needs the field {name!r}")
            else:
                value = list(default) if isinstance(default, list) else \
                    dict(default) if isinstance(default, dict) else default
            setattr(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(kwargs))!r}")

    def values(self) -> list[object]:
        return [getattr(self, name) for name, _check, _default in self.FIELDS]

    @classmethod
    def _from_fields(cls, items: list[object], where: str) -> Struct:
        """An instance from decoded array elements (the tag already removed)."""
        required = sum(1 for field in cls.FIELDS if field[2] is _REQUIRED)
        if len(items) < required:
            raise ProtocolError(f"{where}: expected at least {required} fields, got {len(items)}")
        args = []
        for (name, check, _default), item in zip(cls.FIELDS, items):
            try:
                args.append(check(item))  # type: ignore[operator]
            except _Mismatch as e:
                raise ProtocolError(f"{where}: field {name!r} must be {e.args[0]}, "
                                    f"got {_type_name(item)}") from None
        return cls(*args)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Struct) and type(other) is type(self) and self.values() == other.values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, _check, _default in self.FIELDS)
        return f"{type(self).__name__}({fields})"


def _names(fields: tuple[tuple[str, object, object], ...]) -> tuple[str, ...]:
    return tuple(name for name, _check, _default in fields)


class Message(Struct):
    """Base of every message (tagged)."""

    __slots__ = ()


class JobSpec(Struct):
    """What to run and where.  ``env`` may hold secrets: never log it.  (See
    :class:`jobqueue.protocol.JobSpec`: argv, env and cwd are bytes.)"""

    FIELDS: tuple[tuple[str, object, object], ...] = (
        ("argv", _bytes_list, _REQUIRED), ("env", _bytes_map, _REQUIRED), ("cwd", _bytes, _REQUIRED),
        ("tags", _str_list, []), ("priority", _int, 0), ("timeout", _float_or_none, None),
        ("tty", _bool, False), ("rows", _int, 0), ("cols", _int, 0), ("max_attempts", _int, 3),
        ("stdin", _bool, True), ("umask", _int, -1), ("rlimits", _rlimit_list, []), ("nice", _int_or_none, None),
        ("ignored_signals", _int_list, []), ("blocked_signals", _int_list, []), ("closed_fds", _int_list, []),
        ("merge_output", _bool, False), ("resources", _int_map, {}), ("stage", _bytes, b""),
        ("stage_push", _blob_list, []))
    __slots__ = _names(FIELDS)
    argv: list[bytes]
    env: dict[bytes, bytes]
    cwd: bytes
    tags: list[str]
    priority: int
    timeout: float | None
    tty: bool
    rows: int
    cols: int
    max_attempts: int
    stdin: bool
    umask: int
    rlimits: list[tuple[str, int, int]]
    nice: int | None
    ignored_signals: list[int]
    blocked_signals: list[int]
    closed_fds: list[int]
    merge_output: bool
    resources: dict[str, int]
    stage: bytes
    stage_push: list[tuple[bytes, bytes]]


class ClientHello(Message):
    TAG = "hello"
    FIELDS = (("version", _int, _REQUIRED), ("session", _str, _REQUIRED), ("name", _str, ""),
              ("host", _str, ""), ("pid", _int, 0), ("software", _str, ""), ("previous_server", _str, ""))
    __slots__ = _names(FIELDS)
    version: int
    session: str
    name: str
    host: str
    pid: int
    software: str
    previous_server: str


class Welcome(Message):
    TAG = "welcome"
    FIELDS = (("server_id", _str, _REQUIRED), ("heartbeat", _float, _REQUIRED), ("liveness", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    server_id: str
    heartbeat: float
    liveness: int


class Ping(Message):
    TAG = "ping"
    __slots__ = ()


class Pong(Message):
    TAG = "pong"
    __slots__ = ()


class Unknown(Message):
    TAG = "unknown"
    __slots__ = ()


class Bye(Message):
    TAG = "bye"
    __slots__ = ()


class Refused(Message):
    TAG = "refused"
    FIELDS = (("reason", _str, _REQUIRED),)
    __slots__ = _names(FIELDS)
    reason: str


class Error(Message):
    TAG = "error"
    FIELDS = (("reason", _str, _REQUIRED), ("job_id", _str, ""))
    __slots__ = _names(FIELDS)
    reason: str
    job_id: str


class Submit(Message):
    TAG = "submit"
    FIELDS = (("job_id", _str, _REQUIRED), ("spec", _job_spec, _REQUIRED), ("ticket", _int, 0),
              ("attempt", _int, 0), ("running", _bool, False), ("offsets", _int_list, [0, 0]))
    __slots__ = _names(FIELDS)
    job_id: str
    spec: JobSpec
    ticket: int
    attempt: int
    running: bool
    offsets: list[int]


class Queued(Message):
    TAG = "queued"
    FIELDS = (("job_id", _str, _REQUIRED), ("ticket", _int, _REQUIRED), ("position", _int, _REQUIRED),
              ("why", _str, ""))
    __slots__ = _names(FIELDS)
    job_id: str
    ticket: int
    position: int
    why: str


class Started(Message):
    TAG = "started"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("pid", _int, 0),
              ("worker", _str, ""), ("host", _str, ""), ("resumed", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    pid: int
    worker: str
    host: str
    resumed: bool


class Output(Message):
    TAG = "out"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("fd", _int, _REQUIRED),
              ("offset", _int, _REQUIRED), ("data", _bytes, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    fd: int
    offset: int
    data: bytes


class Input(Message):
    TAG = "in"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("offset", _int, _REQUIRED),
              ("data", _bytes, _REQUIRED), ("eof", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    offset: int
    data: bytes
    eof: bool


class Ack(Message):
    TAG = "ack"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("fd", _int, _REQUIRED),
              ("offset", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    fd: int
    offset: int


class Signal(Message):
    TAG = "signal"
    FIELDS = (("job_id", _str, _REQUIRED), ("signum", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    signum: int


class Resize(Message):
    TAG = "resize"
    FIELDS = (("job_id", _str, _REQUIRED), ("rows", _int, _REQUIRED), ("cols", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    rows: int
    cols: int


class Finished(Message):
    TAG = "finished"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("status", _int, _REQUIRED),
              ("reason", _str, _REQUIRED), ("message", _str, ""), ("offsets", _int_list, [0, 0]))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    status: int
    reason: str
    message: str
    offsets: list[int]


class Release(Message):
    TAG = "release"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int


class Requeued(Message):
    TAG = "requeued"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("reason", _str, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    reason: str


class CloseOutput(Message):
    TAG = "close"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("fd", _int, _REQUIRED))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    fd: int


# --- staging (jq --stage; see protocol.py) ---------------------------------------------------


class Need(Message):
    TAG = "need"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("digests", _bytes_list, _REQUIRED),
              ("epoch", _int, 0), ("push", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    digests: list[bytes]
    epoch: int
    push: bool


class Blob(Message):
    TAG = "blob"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("offset", _int, _REQUIRED),
              ("digest", _bytes, _REQUIRED), ("size", _int, _REQUIRED), ("data", _bytes, _REQUIRED),
              ("end", _bool, False), ("epoch", _int, 0))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    offset: int
    digest: bytes
    size: int
    data: bytes
    end: bool
    epoch: int


class ResultEntry(Struct):
    FIELDS = (("path", _bytes, _REQUIRED), ("kind", _int, _REQUIRED), ("mode", _int, 0), ("mtime_ns", _int, 0),
              ("size", _int, 0), ("target", _bytes, b""), ("deleted", _bool, False))
    __slots__ = _names(FIELDS)
    path: bytes
    kind: int
    mode: int
    mtime_ns: int
    size: int
    target: bytes
    deleted: bool


class Results(Message):
    TAG = "results"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("entries", _result_entries, _REQUIRED),
              ("done", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    entries: list[ResultEntry]
    done: bool


class Want(Message):
    TAG = "want"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("indexes", _int_list, _REQUIRED),
              ("done", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    indexes: list[int]
    done: bool


class ResultData(Message):
    TAG = "rdata"
    FIELDS = (("job_id", _str, _REQUIRED), ("attempt", _int, _REQUIRED), ("offset", _int, _REQUIRED),
              ("index", _int, _REQUIRED), ("data", _bytes, _REQUIRED), ("end", _bool, False))
    __slots__ = _names(FIELDS)
    job_id: str
    attempt: int
    offset: int
    index: int
    data: bytes
    end: bool


#: Every message class of this module (the client's vocabulary).
MESSAGES: tuple[type[Message], ...] = (
    ClientHello, Welcome, Ping, Pong, Unknown, Bye, Refused, Error, Submit, Queued, Started, Output, Input,
    Ack, Signal, Resize, Finished, Release, Requeued, CloseOutput, Need, Blob, Results, Want, ResultData,
)
_TO_CLIENT: dict[str, type[Message]] = {cls.TAG: cls for cls in (
    Welcome, Pong, Unknown, Refused, Error, Queued, Started, Output, Ack, Requeued, Finished,
    Need, Results, ResultData)}
_ANY: dict[str, type[Message]] = {cls.TAG: cls for cls in MESSAGES}


# --- encoding ----------------------------------------------------------------------------------


def encode(message: Struct) -> bytes:
    out = bytearray()
    _pack(message, out)
    return bytes(out)


def _pack(value: object, out: bytearray) -> None:
    if type(value) is bytes:  # first: a job's argv and environment are most of what jq sends
        _pack_bin(value, out)
    elif isinstance(value, Struct):
        items = value.values()
        if value.TAG:
            items.insert(0, value.TAG)
        _pack_header(out, len(items), 0x90, 0xDC)
        for item in items:
            _pack(item, out)
    elif value is None:
        out.append(0xC0)
    elif value is True or value is False:
        out.append(0xC3 if value else 0xC2)
    elif isinstance(value, int):
        _pack_int(value, out)
    elif isinstance(value, float):
        out += b"\xcb" + pack_bytes(">d", value)
    elif isinstance(value, str):
        data = value.encode()
        _pack_header(out, len(data), 0xA0, 0xDA, str8=True)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _pack_bin(bytes(value), out)
    elif isinstance(value, (list, tuple)):
        _pack_header(out, len(value), 0x90, 0xDC)
        for item in value:
            _pack(item, out)
    elif isinstance(value, dict):
        _pack_header(out, len(value), 0x80, 0xDE)
        for key, item in value.items():
            if type(key) is bytes and type(item) is bytes:  # an environment's variable
                _pack_bin(key, out)
                _pack_bin(item, out)
            else:
                _pack(key, out)
                _pack(item, out)
    else:
        raise TypeError(f"cannot encode a {type(value).__name__} in a jobqueue message")


def _pack_header(out: bytearray, n: int, fix: int, code16: int, *, str8: bool = False) -> None:
    """Length prefix of a str (fix: 0xa0), array (0x90) or map (0x80)."""
    fixmax = 31 if str8 else 15
    if n <= fixmax:
        out.append(fix | n)
    elif str8 and n < 0x100:
        out += bytes((0xD9, n))
    elif n < 0x10000:
        out.append(code16)
        out += n.to_bytes(2, "big")
    else:
        out.append(code16 + 1)
        out += n.to_bytes(4, "big")


def _pack_bin(data: bytes, out: bytearray) -> None:
    n = len(data)
    if n < 0x100:
        out.append(0xC4)
        out.append(n)
    elif n < 0x10000:
        out.append(0xC5)
        out += n.to_bytes(2, "big")
    else:
        out.append(0xC6)
        out += n.to_bytes(4, "big")
    out += data


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n < 0x80 or -32 <= n < 0:
        out += n.to_bytes(1, "big", signed=True) if n < 0 else bytes((n,))
        return
    for size, unsigned, signed in ((1, 0xCC, 0xD0), (2, 0xCD, 0xD1), (4, 0xCE, 0xD2), (8, 0xCF, 0xD3)):
        bits = 8 * size
        if 0 <= n < 1 << bits:
            out.append(unsigned)
            out += n.to_bytes(size, "big")
            return
        if -(1 << (bits - 1)) <= n < 0:
            out.append(signed)
            out += n.to_bytes(size, "big", signed=True)
            return
    raise OverflowError(f"integer {n} does not fit in 64 bits")


# --- decoding ------------------------------------------------------------------------------------


def decode_to_client(data: bytes | bytearray | memoryview) -> Message:
    """A message the server sends to a client."""
    return decode_message(data, _TO_CLIENT, "client")


def decode_any(data: bytes | bytearray | memoryview) -> Message:
    """Any message of this module (for tests and tools)."""
    return decode_message(data, _ANY, "client")


def decode_message(data: bytes | bytearray | memoryview, classes: dict[str, type[Message]], side: str) -> Message:
    try:
        raw = unpack(data)
        if type(raw) is not list or not raw:
            raise ProtocolError(f"expected a non-empty array, got {_type_name(raw)}")
        tag = raw[0]
        if type(tag) is not str:
            raise ProtocolError(f"the message tag must be a str, got {_type_name(tag)}")
        cls = classes.get(tag)
        if cls is None:
            raise ProtocolError(f"unexpected message type {tag!r}")
        message = cls._from_fields(raw[1:], cls.__name__)
    except ProtocolError as e:
        raise ProtocolError(f"malformed message for the {side} ({len(data)} bytes): {e}") from None
    return message  # type: ignore[return-value]


def unpack(data: bytes | bytearray | memoryview) -> object:
    """One MessagePack value that spans all of ``data``."""
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise ProtocolError(f"trailing bytes after the message (at byte {reader.pos})")
    return value


#: Nesting deeper than any message has (they go three levels down).
_MAX_DEPTH = 32
_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_SINT = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("truncated message")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def size(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def value(self, depth: int) -> object:
        if depth > _MAX_DEPTH:
            raise ProtocolError("values nested too deeply")
        code = self.take(1)[0]
        if code < 0x80:
            return code
        if code >= 0xE0:
            return code - 0x100
        if 0xA0 <= code < 0xC0:
            return self.text(code & 0x1F)
        if 0x90 <= code < 0xA0:
            return self.array(code & 0x0F, depth)
        if code < 0x90:
            return self.map(code & 0x0F, depth)
        return self.typed(code, depth)

    def typed(self, code: int, depth: int) -> object:
        if code in _FIXED:
            return _FIXED[code]
        if code in _UINT:
            return self.size(_UINT[code])
        if code in _SINT:
            return int.from_bytes(self.take(_SINT[code]), "big", signed=True)
        if code == 0xCB:
            return unpack_bytes(">d", self.take(8))[0]
        if code == 0xCA:
            return unpack_bytes(">f", self.take(4))[0]
        if code in _STR:
            return self.text(self.size(_STR[code]))
        if code in _BIN:
            return self.take(self.size(_BIN[code]))
        if code in _ARRAY:
            return self.array(self.size(_ARRAY[code]), depth)
        if code in _MAP:
            return self.map(self.size(_MAP[code]), depth)
        raise ProtocolError(f"unsupported MessagePack type 0x{code:02x} (extension types are not used)")

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise ProtocolError("a string is not valid UTF-8") from None

    def array(self, n: int, depth: int) -> list[object]:
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> _Pairs:
        return _Pairs((self.value(depth + 1), self.value(depth + 1)) for _ in range(n))


class _Pairs(list[tuple[object, object]]):
    """A decoded map, as its (key, value) pairs: keys may be of any type until a field checks them."""


def _type_name(value: object) -> str:
    names = {list: "array", _Pairs: "map", bytes: "bytes", type(None): "nil"}
    return names.get(type(value), type(value).__name__)
