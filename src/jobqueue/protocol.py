"""The whole jobqueue wire protocol: every message as a typed structure.

Transport: each message is one ZeroMQ frame holding a MessagePack array whose
first element is the message's tag (msgspec tagged structs, ``array_like``).
Workers and clients talk only to the server (DEALER -> ROUTER); the server
relays job traffic between a job's client and its worker.  Peers send one
frame per ZeroMQ message; the server may send several messages for one peer as
the frames of one ZeroMQ message (each frame still one message).

Design points that make the system survive faults (see README "Guarantees"):

* Job ids are chosen by the client, and every peer carries a *session* id that
  survives reconnection, so a restarted server can rebuild its whole state from
  what clients (their jobs) and workers (the jobs they run) tell it again.
* Every byte stream of a job (stdin = fd 0, stdout = 1, stderr = 2) carries
  byte offsets; receivers acknowledge offsets (:class:`Ack`).  The sender keeps
  unacknowledged bytes, so a stream resumes after a reconnection without loss
  or duplication, and the window of unacknowledged bytes is the flow control.
* Every job message carries the job's ``attempt``; a requeued job restarts at
  the next attempt and messages of an older attempt are dropped.

Decoding validates: :func:`decode` raises :class:`ProtocolError` with a
message that says what was wrong, so bad input is refused at the edge.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

# The shared constants are defined once, in the lean client's module (re-exported here).
from .wire import CHUNK_SIZE as CHUNK_SIZE
from .wire import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .wire import MAX_STAGE_PUSH as MAX_STAGE_PUSH
from .wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from .wire import RESULTS as RESULTS
from .wire import STAGE_IN as STAGE_IN
from .wire import STDERR as STDERR
from .wire import STDIN as STDIN
from .wire import STDOUT as STDOUT
from .wire import WINDOW as WINDOW

Role = Literal["client", "worker"]


#: What a frame arrives as (a memoryview when the server avoids copying it).
Buffer = bytes | bytearray | memoryview


class ProtocolError(Exception):
    """A message that does not follow this protocol."""


class Message(msgspec.Struct, array_like=True, tag=True, tag_field="t"):
    """Base of every message."""


# --- sessions -----------------------------------------------------------------


class ClientHello(Message, tag="hello"):
    """First message of a client connection; re-sent after every reconnection."""

    version: int
    session: str
    name: str = ""
    host: str = ""
    pid: int = 0
    software: str = ""
    #: The server this peer was connected to before (empty: none): proof that this
    #: server is a restart, whose dispatch then waits for re-announced jobs.
    previous_server: str = ""


class JobSpec(msgspec.Struct, array_like=True):
    """What to run and where.  ``env`` may hold secrets: never log it.

    ``argv``, ``env`` (names and values) and ``cwd`` are bytes (MessagePack bin),
    as they are for POSIX itself: a job gets exactly the bytes its caller had
    (Latin-1 file names, non-UTF-8 variables).  Bin rather than str with an
    escape: any byte travels as itself, with no escape rule to get wrong or to
    collide with real text, no growth, and both msgspec and the lean client
    handle it natively (protocol version 3).

    The fields after ``stdin`` say how the caller's process stood, so that the
    job starts the same way (README "What a job sees")."""

    argv: list[bytes]
    env: dict[bytes, bytes]
    cwd: bytes
    tags: list[str] = []
    priority: int = 0
    timeout: float | None = None  # run-time limit in seconds, enforced by the worker
    tty: bool = False
    rows: int = 0
    cols: int = 0
    max_attempts: int = 3
    #: False: the job's stdin is /dev/null and no Input follows (a client that
    #: knows it has nothing to send spares every job four messages).
    stdin: bool = True
    #: The caller's umask (-1: the worker's own).
    umask: int = -1
    #: The caller's resource limits that travel, as (name, soft, hard); -1 is unlimited.
    rlimits: list[tuple[str, int, int]] = []
    #: The caller's nice value (None: the worker's own).
    nice: int | None = None
    #: Signals the caller ignored (the job ignores them too) and blocked.
    ignored_signals: list[int] = []
    blocked_signals: list[int] = []
    #: Which of fds 0, 1, 2 the caller had closed: the job starts with them closed.
    closed_fds: list[int] = []
    #: The caller's stdout and stderr are one file (``2>&1``, one terminal): the
    #: job's are one pipe (its output arrives as stream 1), so their order is kept.
    merge_output: bool = False
    #: What the job asks for (:mod:`jobqueue.resources`): pool name -> amount (mem in bytes);
    #: empty asks for one CPU.
    resources: dict[str, int] = {}
    #: ``jq --stage``: the digest of the staged tree's root directory (empty: not
    #: staged).  ``cwd`` is then relative to the tree's copy on the worker (empty: its root).
    stage: bytes = b""
    #: Small blobs of the tree, as (digest, bytes), that changed since the client's last
    #: snapshot of it: a worker that holds that snapshot then lacks nothing else, and the
    #: job starts without a round trip to ask for them (at most MAX_STAGE_PUSH bytes).
    stage_push: list[tuple[bytes, bytes]] = []


class Grant(msgspec.Struct, array_like=True):
    """Part of what a job was given: ``amount`` of pool ``name``, and which ``items``
    of an indexed pool (GPUs)."""

    name: str
    amount: int
    items: list[str] = []


class ResourcePool(msgspec.Struct, array_like=True):
    """A resource a worker has: a sum (``items`` empty) or distinct items (``total`` = their number)."""

    name: str
    total: int
    items: list[str] = []


class ActiveJob(msgspec.Struct, array_like=True):
    """A job a worker still holds when it (re)connects: running, or finished
    but not yet released by its client (its :class:`Finished` is re-sent)."""

    job_id: str
    attempt: int
    argv: list[bytes]  # for display: the worker may shorten it
    tags: list[str]
    finished: bool = False
    allocation: list[Grant] = []  # what it holds, so a restarted server counts it


class WorkerHello(Message, tag="whello"):
    """First message of a worker connection; re-sent after every reconnection.

    ``jobs`` lists what the worker still holds, so a restarted server learns
    which jobs are running where."""

    version: int
    session: str
    name: str
    host: str
    pid: int
    software: str
    slots: int
    tags: list[str] = []
    jobs: list[ActiveJob] = []
    draining: bool = False
    spawn_id: str = ""  # $JOBQUEUE_SPAWN_ID: the server's --spawn started this worker
    previous_server: str = ""  # as in ClientHello
    #: Its resources (cpus, mem, gpus, named); empty: ``slots`` CPUs.
    resources: list[ResourcePool] = []


class Welcome(Message, tag="welcome"):
    """Server's answer to a hello: the liveness settings every peer follows."""

    server_id: str
    heartbeat: float
    liveness: int


class Ping(Message, tag="ping"):
    """Heartbeat from a peer; the server answers :class:`Pong`."""


class Pong(Message, tag="pong"):
    """Heartbeat answer from the server."""


class Unknown(Message, tag="unknown"):
    """The server does not know this connection (it restarted): say hello again."""


class Refused(Message, tag="refused"):
    """Fatal refusal (version mismatch, role not allowed, ...).  Do not retry."""

    reason: str


class Error(Message, tag="error"):
    """A message was rejected; the connection stays usable."""

    reason: str
    job_id: str = ""


class Bye(Message, tag="bye"):
    """A client leaves politely (its jobs, if any, are dropped)."""


# --- job lifecycle --------------------------------------------------------------


class Submit(Message, tag="submit"):
    """Client -> server: queue a job, or re-attach to it after a reconnection.

    ``ticket`` is 0 for a new job, else the ticket an earlier server gave
    (keeps queue order across server restarts).  ``attempt`` > 0 with
    ``running`` says the job had started on a worker; ``offsets`` are the
    stdout/stderr bytes the client already has."""

    job_id: str
    spec: JobSpec
    ticket: int = 0
    attempt: int = 0
    running: bool = False
    offsets: list[int] = msgspec.field(default_factory=lambda: [0, 0])


class Queued(Message, tag="queued"):
    job_id: str
    ticket: int
    position: int
    #: Set when no connected worker could ever run the job (it waits: workers may come).
    why: str = ""


class Assign(Message, tag="assign"):
    """Server -> worker: run this job (only sent to a worker with a free slot)."""

    job_id: str
    attempt: int
    spec: JobSpec
    allocation: list[Grant] = []  # what the job holds while it runs


class AssignRaw(Message, tag="assign"):
    """The server's form of :class:`Assign` (same bytes on the wire): the spec as
    encoded once at submission, so a queued job does not keep its environment
    decoded (a dict of str is several times its encoded size)."""

    job_id: str
    attempt: int
    spec: msgspec.Raw
    allocation: list[Grant] = []


class Reject(Message, tag="reject"):
    """Worker -> server: cannot take this assignment now (no free slot)."""

    job_id: str
    attempt: int
    reason: str


class Started(Message, tag="started"):
    """The job's process runs.  Worker -> server carries the pid; server ->
    client adds the worker's name and host."""

    job_id: str
    attempt: int
    pid: int = 0
    worker: str = ""
    host: str = ""
    resumed: bool = False


class Output(Message, tag="out"):
    """Bytes the job wrote on ``fd`` (1 or 2), starting at byte ``offset``."""

    job_id: str
    attempt: int
    fd: int
    offset: int
    data: bytes


class Input(Message, tag="in"):
    """Bytes for the job's stdin starting at ``offset``; ``eof`` closes it."""

    job_id: str
    attempt: int
    offset: int
    data: bytes
    eof: bool = False


class RelayedOutput(Message, tag="out"):
    """The server's view of :class:`Output`: it relays the frame as it came, so
    ``data`` stays in the frame (``Raw``, not copied); the broker checks that it
    is a MessagePack bin, as :class:`Output` requires."""

    job_id: str
    attempt: int
    fd: int
    offset: int
    data: msgspec.Raw


class RelayedInput(Message, tag="in"):
    """The server's view of :class:`Input` (see :class:`RelayedOutput`)."""

    job_id: str
    attempt: int
    offset: int
    data: msgspec.Raw
    eof: bool = False


def is_bin(raw: msgspec.Raw) -> bool:
    """Whether an undecoded value is a MessagePack bin (bytes)."""
    view = memoryview(raw)
    return len(view) > 0 and view[0] in (0xC4, 0xC5, 0xC6)


class Ack(Message, tag="ack"):
    """Receiver has consumed stream ``fd`` of the job up to ``offset``.

    Client -> worker for fds 1 and 2 (written to the client's stdout/stderr);
    worker -> client for fd 0 (written to the job's stdin)."""

    job_id: str
    attempt: int
    fd: int
    offset: int


class Resume(Message, tag="resume"):
    """Server -> worker: the client re-attached; re-send output from these
    offsets (and the worker answers with its stdin :class:`Ack`)."""

    job_id: str
    attempt: int
    offsets: list[int]


class Signal(Message, tag="signal"):
    """Deliver signal ``signum`` to the job's process group.  For a queued job
    the server cancels it instead."""

    job_id: str
    signum: int


class Resize(Message, tag="resize"):
    """The client's terminal changed size (``-t`` jobs)."""

    job_id: str
    rows: int
    cols: int


class Finished(Message, tag="finished"):
    """The job ended.  ``status`` is what jq exits with.

    ``reason``: ``exited``, ``signaled``, ``timeout``, ``not-found`` (127),
    ``not-executable`` (126), ``failed`` (could not start: 255), ``cancelled``,
    ``lost`` (its worker was lost too often: 255), ``killed`` (client gone),
    ``out-of-memory`` (past its ``--mem`` under ``--enforce-mem``: 137)."""

    job_id: str
    attempt: int
    status: int
    reason: str
    message: str = ""
    offsets: list[int] = msgspec.field(default_factory=lambda: [0, 0])


class Release(Message, tag="release"):
    """Client -> server -> worker: the client has the job's end; forget it."""

    job_id: str
    attempt: int


class Requeued(Message, tag="requeued"):
    """Server -> client: the job's worker was lost; it runs again from scratch."""

    job_id: str
    attempt: int
    reason: str


class Kill(Message, tag="kill"):
    """Server -> worker: stop this job now (its client is gone, or the attempt
    is stale); the worker kills its process group and frees the slot."""

    job_id: str
    attempt: int
    reason: str


class CloseOutput(Message, tag="close"):
    """Client -> server -> worker: nobody reads stream ``fd`` (1 or 2) of the job
    any more (the client's stdout or stderr is a pipe whose reader left).  The
    worker closes its end of the job's pipe, so the job meets SIGPIPE (or EPIPE)
    on its next write, as it would locally, and output of it stops."""

    job_id: str
    attempt: int
    fd: int


class Goodbye(Message, tag="goodbye"):
    """Worker -> server: stopping now; requeue my jobs at once."""

    reason: str = ""


class Drain(Message, tag="drain"):
    """Worker -> server: take no more jobs from me.  Server -> worker: drain."""


# --- staging (jq --stage, see jobqueue.staging) ------------------------------------------
#
# Before a staged job starts, its worker asks for the blobs of the tree it lacks
# (Need); the client streams them (Blob, stream STAGE_IN: offsets over all the
# blobs of the attempt, acknowledged by the worker's Ack with fd STAGE_IN).
# When the job has ended, the worker lists what it created, changed or deleted
# (Results), the client says which it wants (Want), the worker streams them
# (ResultData, stream RESULTS, acknowledged by the client), then reports Finished.


class Need(Message, tag="need"):
    """Worker -> client: send these blobs (file contents or directories) of the tree.

    ``epoch`` counts the worker's restarts of the staging stream (after a server
    restart lost blobs in flight): the client starts its stream again at offset 0.
    ``push``: the worker also takes, sent before these, blobs it did not name that
    the client thinks it lacks (what changed since the client's last snapshot, a
    little of it): a changed file deep in the tree then costs one round trip."""

    job_id: str
    attempt: int
    digests: list[bytes]
    epoch: int = 0
    push: bool = False


class Blob(Message, tag="blob"):
    """Client -> worker: bytes of blob ``digest`` (``size`` bytes in all), at
    ``offset`` of the attempt's staging stream (of this ``epoch``); ``end`` closes the blob."""

    job_id: str
    attempt: int
    offset: int
    digest: bytes
    size: int
    data: bytes
    end: bool = False
    epoch: int = 0


class RelayedBlob(Message, tag="blob"):
    """The server's view of :class:`Blob` (see :class:`RelayedOutput`)."""

    job_id: str
    attempt: int
    offset: int
    digest: bytes
    size: int
    data: msgspec.Raw
    end: bool = False
    epoch: int = 0


class ResultEntry(msgspec.Struct, array_like=True):
    """A path the job created, changed or (``deleted``) removed, relative to the tree."""

    path: bytes
    kind: int
    mode: int = 0
    mtime_ns: int = 0
    size: int = 0
    target: bytes = b""
    deleted: bool = False


class Results(Message, tag="results"):
    """Worker -> client: the next entries of the job's results; ``done`` on the last batch."""

    job_id: str
    attempt: int
    entries: list[ResultEntry]
    done: bool = False


class Want(Message, tag="want"):
    """Client -> worker: send these results (indexes into all the Results entries)."""

    job_id: str
    attempt: int
    indexes: list[int]
    done: bool = False


class ResultData(Message, tag="rdata"):
    """Worker -> client: bytes of result ``index`` at ``offset`` of the RESULTS stream."""

    job_id: str
    attempt: int
    offset: int
    index: int
    data: bytes
    end: bool = False


class RelayedResultData(Message, tag="rdata"):
    """The server's view of :class:`ResultData`."""

    job_id: str
    attempt: int
    offset: int
    index: int
    data: msgspec.Raw
    end: bool = False


# --- control (jobqueue status / cancel / drain) -------------------------------------


class StatusRequest(Message, tag="status"):
    version: int


class ResourceUse(msgspec.Struct):
    name: str
    used: int
    total: int


class WorkerInfo(msgspec.Struct):
    name: str
    host: str
    state: str  # idle, busy, draining
    slots: int
    tags: list[str]
    jobs: list[str]
    since: float  # seconds in the current state
    software: str
    pid: int
    resources: list[ResourceUse] = []


class JobInfo(msgspec.Struct):
    job_id: str
    argv: list[str]  # readable: bytes that are not UTF-8 as \xNN (see readable_argv)
    state: str
    worker: str
    tags: list[str]
    priority: int
    attempt: int
    seconds: float  # waiting (queued) or running time
    why: str = ""  # why a queued job waits
    owner: str = ""  # who submitted it (a CURVE key's name, a Unix user, or "local")
    cwd: str = ""  # its directory (shown only to its owner and admins, as argv and tags)
    resources: dict[str, int] = {}  # what it asks for (as in its spec)


class SpawnInfo(msgspec.Struct):
    """A worker the server's --spawn started that has not connected yet."""

    spawn_id: str
    seconds: float  # since its command was run


class StatusReply(Message, tag="statusr"):
    server_id: str
    software: str
    workers: list[WorkerInfo]
    jobs: list[JobInfo]
    spawning: list[SpawnInfo] = []


class CancelRequest(Message, tag="cancel"):
    version: int
    job_ids: list[str]
    signum: int


class DrainRequest(Message, tag="drainr"):
    version: int
    workers: list[str]


class ControlReply(Message, tag="controlr"):
    done: list[str]
    unknown: list[str]
    #: Why some were refused, one line each (another owner's job; drain without the admin role).
    refused: list[str] = []



# --- watching (the dashboard) ---------------------------------------------------------------
# A client (the dashboard) subscribes with Watch: it gets the whole state once, in
# WatchState pages, then Changes at most a few times a second.  Tail asks for a job's
# output: the last bytes the server kept, then every chunk it relays (Output messages,
# the very frames the job's client gets), acknowledged with TailAck; a watcher that falls
# behind misses chunks (it sees the gap in the offsets), the job never waits for it.
# All times are wall-clock seconds since the epoch.


class Watch(Message, tag="watch"):
    """Client -> server: send me the state, then push its changes."""


class WatchedWorker(msgspec.Struct, array_like=True):
    session: str
    name: str
    host: str
    state: str  # idle, busy, draining, lost, left
    slots: int
    tags: list[str]
    jobs: list[str]
    joined: float  # when it connected
    software: str
    pid: int
    changed: float = 0.0  # when it got its current state


class WatchedJob(msgspec.Struct, array_like=True):
    """A queued or running job."""

    job_id: str
    argv: list[str]
    state: str  # queued, requeued, running
    worker: str
    tags: list[str]
    priority: int
    attempt: int
    queued: float  # when it was first queued (0: unknown, after a server restart)
    since: float  # when it entered its state (queued again, or started)
    why: str = ""  # why a waiting job waits


class Outcome(msgspec.Struct, array_like=True):
    """A finished job, in the server's bounded history."""

    job_id: str
    argv: list[str]
    tags: list[str]
    worker: str
    attempt: int
    status: int
    reason: str
    outcome: str  # succeeded, nonzero, signaled, timeout, ..., cancelled, lost
    queued: float
    started: float  # 0: never started
    ended: float


class SeriesPoint(msgspec.Struct, array_like=True):
    """One interval of the last hour: ``start`` and the figures seen in it."""

    start: float
    queued: int  # most jobs waiting at once
    running: int  # most jobs running at once
    finished: dict[str, int]  # outcome -> jobs ended in the interval (plus "requeued")
    wait_p50: float  # queue wait of the jobs started in the interval (seconds; -1: none)
    wait_p95: float


class WatchState(Message, tag="watchs"):
    """Server -> watcher: the whole state, in pages (``last`` on the final one)."""

    server_id: str
    software: str
    now: float
    interval: float
    workers: list[WatchedWorker]
    jobs: list[WatchedJob]
    history: list[Outcome]
    series: list[SeriesPoint]
    last: bool


class Changes(Message, tag="changes"):
    """Server -> watcher: what changed since the last push (jobs and workers as they
    are now; ``gone``: jobs no longer queued or running)."""

    now: float
    workers: list[WatchedWorker]
    jobs: list[WatchedJob]
    gone: list[str]
    finished: list[Outcome]
    series: list[SeriesPoint]  # the intervals closed since the last push


class Tail(Message, tag="tail"):
    """Client -> server: follow this job's output (``follow`` False: stop)."""

    job_id: str
    follow: bool = True


class TimelineEntry(msgspec.Struct, array_like=True):
    at: float
    what: str  # queued, started, requeued, finished, ...
    detail: str = ""


class JobDetail(Message, tag="detail"):
    """Server -> watcher, first answer to :class:`Tail`: the job as far as may be
    shown (environment variable names, never their values).  ``known`` False: the
    server has no such job (any more); ``output`` False: it kept none of its output."""

    job_id: str
    known: bool
    argv: list[str] = []
    cwd: str = ""
    env_names: list[str] = []
    tags: list[str] = []
    priority: int = 0
    timeout: float | None = None
    tty: bool = False
    state: str = ""
    worker: str = ""
    attempt: int = 0
    timeline: list[TimelineEntry] = []
    outcome: Outcome | None = None
    output: bool = False


class TailAck(Message, tag="tailack"):
    """Watcher -> server: it has consumed the job's stream ``fd`` up to ``offset``."""

    job_id: str
    attempt: int
    fd: int
    offset: int


class TailEnd(Message, tag="tailend"):
    """Server -> watcher: no more output will come for this job (it ended, or
    ``follow`` was turned off)."""

    job_id: str


ToServer = Union[
    ClientHello,
    WorkerHello,
    Ping,
    Bye,
    Submit,
    RelayedInput,
    Ack,
    Signal,
    Resize,
    Release,
    Started,
    RelayedOutput,
    Finished,
    Reject,
    Goodbye,
    Drain,
    StatusRequest,
    CancelRequest,
    DrainRequest,
    Watch,
    Tail,
    TailAck,
    CloseOutput,
    Need,
    RelayedBlob,
    Results,
    Want,
    RelayedResultData,
]
ToClient = Union[
    Welcome,
    Pong,
    Unknown,
    Refused,
    Error,
    Queued,
    Started,
    Output,
    Ack,
    Requeued,
    Finished,
    StatusReply,
    ControlReply,
    Need,
    Results,
    ResultData,
]
#: What a watcher (the dashboard, a client that sent Watch) receives: a client's
#: messages and the watching ones.  Jobs' clients never get these (jq's lean mirror
#: in :mod:`jobqueue.wire` need not know them).
ToWatcher = Union[
    Welcome,
    Pong,
    Unknown,
    Refused,
    Error,
    Output,
    ControlReply,
    WatchState,
    Changes,
    JobDetail,
    TailEnd,
]
ToWorker = Union[
    Welcome, Pong, Unknown, Refused, Error, Assign, Input, Ack, Signal, Resize, Resume, Release, Kill, Drain,
    CloseOutput, Blob, Want,
]

_encoder = msgspec.msgpack.Encoder()
_server_decoder = msgspec.msgpack.Decoder(ToServer)
_client_decoder = msgspec.msgpack.Decoder(ToClient)
_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
_watcher_decoder = msgspec.msgpack.Decoder(ToWatcher)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def encode_spec(spec: JobSpec) -> bytes:
    return _encoder.encode(spec)


_spec_decoder = msgspec.msgpack.Decoder(JobSpec)


def decode_spec(data: bytes) -> JobSpec:
    """A spec encoded by :func:`encode_spec` (by us: it is known to be valid)."""
    return _spec_decoder.decode(data)


def readable(arg: bytes) -> str:
    """An argument (or path) for people: UTF-8 as itself, other bytes as ``\\xNN``."""
    return arg.decode("utf-8", "backslashreplace")


def readable_argv(argv: list[bytes]) -> list[str]:
    return [readable(a) for a in argv]


def assign_encoded(job_id: str, attempt: int, spec: bytes, allocation: list[Grant]) -> AssignRaw:
    """An Assign whose spec is already encoded (see :func:`encode_spec`)."""
    return AssignRaw(job_id, attempt, msgspec.Raw(spec), allocation)


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: Buffer, side: str) -> Message:
    try:
        message: Message = decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ProtocolError(_explain(data, str(e), side)) from None
    return message


def decode_to_server(data: Buffer) -> Message:
    return _decode(_server_decoder, data, "server")


def decode_to_client(data: Buffer) -> Message:
    return _decode(_client_decoder, data, "client")


def decode_to_watcher(data: Buffer) -> Message:
    return _decode(_watcher_decoder, data, "watcher")


def decode_to_worker(data: Buffer) -> Message:
    return _decode(_worker_decoder, data, "worker")


def _explain(data: Buffer, error: str, side: str) -> str:
    """Turn a decode failure into a message that says what to do; a hello of
    another protocol version gets a version-mismatch message naming both."""
    peer_version = hello_version(data)
    if peer_version is not None and peer_version != PROTOCOL_VERSION:
        return version_mismatch(peer_version)
    return f"malformed message for the {side} ({len(data)} bytes): {error}"


def hello_version(data: Buffer) -> int | None:
    """The protocol version in a (possibly incompatible) hello, if any."""
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    if (
        isinstance(raw, list)
        and len(raw) >= 2
        and raw[0] in ("hello", "whello", "status", "cancel", "drainr")
        and isinstance(raw[1], int)
    ):
        return raw[1]
    return None


def version_mismatch(peer_version: int) -> str:
    return (
        f"protocol version mismatch: server speaks version {PROTOCOL_VERSION}, "
        f"peer speaks version {peer_version}; install the same jobqueue release everywhere"
    )
