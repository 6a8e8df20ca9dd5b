"""A minimal ZeroMQ DEALER: ZMTP 3.1 with the NULL mechanism over a plain socket.

It lets ``jq`` talk to the server's ROUTER without loading pyzmq (see ZMTP 3.1,
https://rfc.zeromq.org/spec/37/).  A connection is: both peers send a 64-byte
greeting (signature, version 3.1, mechanism ``NULL``), then a ``READY``
command carrying their ``Socket-Type``; after that every message is a frame
``flags, size, body`` (flags: 0x01 more frames follow, 0x02 8-byte size,
0x04 command).  Each frame is one jobqueue message (the server sends a round's
messages for one peer as the frames of one ZeroMQ message).  CURVE is not
spoken here: with keys, pyzmq is used.

Everything is non-blocking and driven from the caller's poll loop: poll
:meth:`Dealer.fileno` for reading, and for writing while :meth:`wants_write`.
While the server is not there, the connect is retried every 100 ms (as
libzmq does); a dropped connection is not re-established here (the caller
makes a new :class:`Dealer`).
"""

from __future__ import annotations

# _socket is the C core of socket, without the enum and selectors imports that
# cost jq about 3 ms of start-up for every job.
import _socket as socket
import errno
import os
import time

SIGNATURE_START, SIGNATURE_END = 0xFF, 0x7F
GREETING_SIZE = 64
GREETING = (bytes([SIGNATURE_START]) + bytes(8) + bytes([SIGNATURE_END, 3, 1]) + b"NULL".ljust(20, b"\0")
            + b"\0" + bytes(31))
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
RETRY_INTERVAL = 0.1
CONNECT_CHECK = 0.01
#: Messages queued while the connection is not up (ZMQ_SNDHWM of the pyzmq path).
QUEUE_LIMIT = 10000
#: Bytes read from the socket per call of :meth:`Dealer.receive` at most (fairness).
READ_BUDGET = 4 << 20
#: Small reads go through one reused buffer of this size.
READ_SIZE = 256 << 10
#: A frame at least this big that is not complete yet is read straight into a
#: buffer of its own (its bytes are copied once, by the kernel).
BIG_FRAME = 64 << 10


class ZmtpError(Exception):
    """The peer does not speak our protocol (or broke it); the message says how."""


class MechanismMismatch(ZmtpError):
    """The peer wants a security mechanism (CURVE) where we offer NULL."""


class HandshakeRejected(ZmtpError):
    """The peer closed the connection in the middle of the greeting (libzmq does so on a
    mechanism mismatch before telling its own mechanism)."""


#: Buffers handed to one sendmsg (well under the kernel's IOV_MAX of 1024).
MAX_IOV = 64


def frame(body: bytes, flags: int = 0) -> bytes:
    """One ZMTP frame: short form up to 255 bytes, else the 8-byte size form."""
    return frame_header(len(body), flags) + body


def frame_header(size: int, flags: int = 0) -> bytes:
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | LONG,)) + size.to_bytes(8, "big")


def command(name: bytes, data: bytes | bytearray = b"") -> bytes:
    return frame(bytes((len(name),)) + name + data, COMMAND)


def ready_command(socket_type: bytes) -> bytes:
    prop = b"Socket-Type"
    return command(b"READY", bytes((len(prop),)) + prop + len(socket_type).to_bytes(4, "big") + socket_type)


def parse_metadata(data: bytes | bytearray) -> dict[str, bytes | bytearray]:
    """READY properties: name (1-byte size) and value (4-byte size) pairs; names are case-insensitive."""
    props, i = {}, 0
    while i < len(data):
        n = data[i]
        name_end = i + 1 + n
        if name_end + 4 > len(data):
            raise ZmtpError("malformed READY metadata")
        size = int.from_bytes(data[name_end:name_end + 4], "big")
        value_end = name_end + 4 + size
        if value_end > len(data):
            raise ZmtpError("malformed READY metadata")
        props[data[i + 1:name_end].decode("ascii", "replace").lower()] = data[name_end + 4:value_end]
        i = value_end
    return props


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return True


def resolve(endpoint: str) -> tuple[int, str | tuple[str, int]]:
    """Address family and address of ``ipc://PATH`` or ``tcp://HOST:PORT`` (IPv4 unless
    HOST is a bracketed IPv6 address, as libzmq does by default)."""
    if endpoint.startswith("ipc://"):
        return socket.AF_UNIX, endpoint[len("ipc://"):]
    if not endpoint.startswith("tcp://"):
        raise ZmtpError(f"unsupported endpoint {endpoint!r}: use tcp://HOST:PORT or ipc:///PATH")
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ZmtpError(f"bad server address {endpoint}: expected tcp://HOST:PORT, PORT from 1 to 65535")
    if host.startswith("["):
        return socket.AF_INET6, (host.strip("[]"), int(port))
    if _is_ipv4(host):  # no resolver (nor its idna codec) for a literal address
        return socket.AF_INET, (host, int(port))
    try:
        info = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ZmtpError(f"cannot resolve the server address {endpoint}: {why}") from None
    address = info[0][4]
    return socket.AF_INET, (str(address[0]), int(address[1]))


class Dealer:
    """One connection to a ROUTER; queue messages with :meth:`send`, get them with :meth:`receive`."""

    def __init__(self, endpoint: str, max_message: int) -> None:
        self.endpoint = endpoint
        self.max_message = max_message
        self.family, self.address = resolve(endpoint)
        self.sock: socket.socket | None = None
        self.state = "waiting"  # waiting -> connecting -> greeting -> ready -> open (or closed)
        self.retry_at = 0.0
        self.inbox = bytearray()
        self._buffer = bytearray(READ_SIZE)
        #: A big frame being read into its own buffer: (flags, body, bytes filled).
        self._big: tuple[int, bytearray, int] | None = None
        #: Big frames complete, waiting to be handled before anything in the inbox.
        self._big_done: list[tuple[int, bytearray]] = []
        #: Buffers to write, in order: written with sendmsg (scatter-gather), so a big
        #: chunk is never joined or moved; the first may be a view of a partly sent one.
        self.outbox: list[bytes | memoryview] = []
        self.pending: list[bytes] = []  # frames queued before the handshake completed
        self.lost = ""  # why the connection dropped (raised once what came before is handled)
        self._idle: tuple[int, int] | None = None  # a pipe nobody writes: our fd while there is no socket
        try:
            self.maintain(time.monotonic())
        except ConnectionError as e:  # reset at once (a server dying): the caller hears it on the next call
            self.lost = self.lost or str(e)

    # --- the caller's poll loop -----------------------------------------------------------------

    def fileno(self) -> int:
        if self.sock is not None:
            return self.sock.fileno()
        if self._idle is None:
            self._idle = os.pipe()
        return self._idle[0]

    @property
    def pollable(self) -> int:
        """What to register in a poller: the fd (it changes when a connect is retried)."""
        return self.fileno()

    def poll_events(self) -> int:
        """POLLIN, plus POLLOUT while a connect is in progress or output waits."""
        return 1 | (4 if self.wants_write() else 0)

    def wants_write(self) -> bool:
        return self.state == "connecting" or bool(self.outbox)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until the next connect attempt (or check of one in progress, for
        pollers that do not watch POLLOUT), if one is due."""
        if self.state == "connecting":
            return CONNECT_CHECK
        return max(0.0, self.retry_at - now) if self.state == "waiting" else None

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def send(self, message: bytes) -> bool:
        """Queue a single-frame message; False if the queue is full while not connected.

        It is written by the next :meth:`maintain` (the loop's tick, once a round),
        so the messages of a round leave in one system call."""
        if self.state != "open":
            if len(self.pending) >= QUEUE_LIMIT:
                return False
            self.pending.append(frame(message))
            return True
        self.outbox += (frame_header(len(message)), message)
        return True

    def maintain(self, now: float) -> None:
        """Connect when due, finish a connect in progress, and write what the kernel takes."""
        if self.lost and not self.inbox:
            raise ConnectionError(self.lost)
        if self.state == "waiting" and now >= self.retry_at:
            self._connect(now)
        if self.state == "connecting":
            self._check_connected(now)
        if self.outbox and self.state in ("greeting", "ready", "open"):
            self._write()

    def receive(self, now: float) -> list[bytes | bytearray]:
        """Every complete message that arrived (raises :class:`ZmtpError` on a broken peer,
        :class:`ConnectionError` when the connection dropped)."""
        self.maintain(now)
        if self.sock is None or self.state == "connecting":
            return []
        self._read()
        messages: list[bytes | bytearray] = []
        if self.state == "greeting":
            self._take_greeting()
        for flags, body in self._big_done:
            self._handle_frame(flags, body, messages)
        self._big_done.clear()
        while self.state in ("ready", "open") and self._take_frame(messages):
            pass
        if self.lost and self.state == "greeting":
            raise HandshakeRejected(f"the server at {self.endpoint} closed the connection during the "
                                    "ZeroMQ handshake")
        if self.lost and not messages:
            raise ConnectionError(self.lost)
        return messages  # a drop right after them is raised by the next call

    def close(self, linger: float = 0.0) -> None:
        """Close, after up to ``linger`` seconds spent sending what is queued."""
        if self.sock is not None and linger > 0 and self.state == "open":
            self._drain(time.monotonic() + linger)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._idle is not None:
            for fd in self._idle:
                os.close(fd)
            self._idle = None
        self.state = "closed"

    # --- connecting ------------------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(self.address)
        if error in (0, errno.EINPROGRESS):
            self.sock = sock
            self.state = "connecting"
        else:  # not there yet (ECONNREFUSED, ENOENT, EAGAIN...): try again soon
            sock.close()
            self.retry_at = now + RETRY_INTERVAL

    def _check_connected(self, now: float) -> None:
        assert self.sock is not None
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == 0:
            try:
                self.sock.getpeername()
            except OSError:
                return  # still in progress
            self.state = "greeting"
            self.outbox.append(GREETING + ready_command(b"DEALER"))
        elif error not in (errno.EINPROGRESS, errno.EALREADY):
            self.sock.close()
            self.sock = None
            self.state = "waiting"
            self.retry_at = now + RETRY_INTERVAL

    # --- bytes in and out --------------------------------------------------------------------------

    def _write(self) -> None:
        if self.sock is None or self.state == "connecting":
            return
        while self.outbox:
            try:
                sent = self.sock.sendmsg(self.outbox[:MAX_IOV])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise ConnectionError(f"lost the connection to {self.endpoint}: {e.strerror}") from None
            self._consume(sent)

    def _consume(self, sent: int) -> None:
        """Drop ``sent`` written bytes from the front of the outbox."""
        while sent:
            first = self.outbox[0]
            if sent < len(first):
                self.outbox[0] = memoryview(first)[sent:]
                return
            sent -= len(first)
            del self.outbox[0]

    def _drain(self, deadline: float) -> None:
        import select

        poller = select.poll()
        poller.register(self.fileno(), select.POLLOUT)
        while self.outbox and time.monotonic() < deadline:
            poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            try:
                self._write()
            except ConnectionError:
                return

    def _read(self) -> None:
        """Read what the socket has (a big frame straight into its own buffer); a dropped
        connection is noted in :attr:`lost`, to be raised once the bytes that came
        before it are handled."""
        assert self.sock is not None
        budget = READ_BUDGET
        while budget > 0 and not self.lost:
            if self._big is not None:
                flags, body, filled = self._big
                n = self._recv_into(memoryview(body)[filled:])
                if n is None:
                    return
                filled += n
                self._big = (flags, body, filled) if filled < len(body) else None
                if self._big is None:
                    self._big_done.append((flags, body))
            else:
                n = self._recv_into(self._buffer)
                if n is None:
                    return
                self.inbox += memoryview(self._buffer)[:n]
            budget -= n

    def _recv_into(self, view: memoryview | bytearray) -> int | None:
        """Bytes read into ``view``; None when there are none now (or the connection dropped)."""
        assert self.sock is not None
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self.lost = f"lost the connection to {self.endpoint}: {e.strerror}"
            return None
        if not n:
            self.lost = f"the server at {self.endpoint} closed the connection"
            return None
        return n

    # --- the handshake --------------------------------------------------------------------------------

    def _take_greeting(self) -> None:
        got = self.inbox[:GREETING_SIZE]
        if got[:1] and (got[0] != SIGNATURE_START or (len(got) >= 10 and got[9] != SIGNATURE_END)):
            raise ZmtpError(f"the peer at {self.endpoint} does not speak ZeroMQ (ZMTP): is it a jobqueue-server?")
        if len(got) > 10 and got[10] < 3:
            raise ZmtpError(f"the peer at {self.endpoint} speaks ZMTP {got[10]}, not 3: "
                            "upgrade its libzmq (or is it a jobqueue-server?)")
        if len(got) < GREETING_SIZE:
            return
        mechanism = bytes(got[12:32]).rstrip(b"\0").decode("ascii", "replace")
        if mechanism != "NULL":
            raise MechanismMismatch(mechanism)
        del self.inbox[:GREETING_SIZE]
        self.state = "ready"

    def _on_command(self, body: bytes | bytearray) -> None:
        name_end = 1 + body[0] if body else 0
        name, data = body[1:name_end], body[name_end:]
        if self.state == "ready":
            self._on_handshake_command(name, data)
        elif name == b"PING":  # TTL (2 bytes), then a context to echo
            self.outbox.append(command(b"PONG", data[2:]))
            self._write()
        elif name == b"ERROR":
            raise ZmtpError(f"the server at {self.endpoint} reported an error: {data[1:].decode(errors='replace')}")

    def _on_handshake_command(self, name: bytes | bytearray, data: bytes | bytearray) -> None:
        if name == b"ERROR":
            raise ZmtpError(f"the server at {self.endpoint} refused the connection: "
                            f"{data[1:].decode(errors='replace')}")
        if name != b"READY":
            raise ZmtpError(f"the peer at {self.endpoint} sent {name!r} during the handshake, not READY")
        peer_type = parse_metadata(data).get("socket-type", b"")
        if peer_type != b"ROUTER":
            raise ZmtpError(f"the peer at {self.endpoint} is a ZeroMQ {peer_type.decode(errors='replace')} socket, "
                            "not a jobqueue-server (ROUTER)")
        self.state = "open"
        self.outbox += self.pending
        self.pending = []
        self._write()

    # --- frames ---------------------------------------------------------------------------------------

    def _take_frame(self, messages: list[bytes | bytearray]) -> bool:
        """Consume the next frame, adding it to ``messages`` if it is a whole message;
        False if it has not fully arrived yet."""
        inbox = self.inbox
        if len(inbox) < 2:
            return False
        flags = inbox[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZmtpError(f"the server at {self.endpoint} sent a frame with unknown flags {flags:#x}")
        if flags & LONG:
            if len(inbox) < 9:
                return False
            size, start = int.from_bytes(inbox[1:9], "big"), 9
        else:
            size, start = inbox[1], 2
        if size > self.max_message:
            raise ZmtpError(f"the server at {self.endpoint} sent a message of {size} bytes, "
                            f"over the limit of {self.max_message}")
        end = start + size
        if len(inbox) < end:
            if size >= BIG_FRAME and self.state == "open":  # read the rest straight into its buffer
                big = bytearray(size)
                have = len(inbox) - start
                big[:have] = memoryview(inbox)[start:]
                inbox.clear()
                self._big = (flags, big, have)
            return False
        with memoryview(inbox) as view:
            body = bytes(view[start:end])
        del inbox[:end]
        self._handle_frame(flags, body, messages)
        return True

    def _handle_frame(self, flags: int, body: bytes | bytearray, messages: list[bytes | bytearray]) -> None:
        if flags & COMMAND:
            self._on_command(body)
            return
        if self.state != "open":
            raise ZmtpError(f"the peer at {self.endpoint} sent a message before its READY command")
        messages.append(body)  # each frame is one message (the server batches them)
