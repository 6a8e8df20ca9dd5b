"""A peer's link to the server, shared by workers and clients.

Paranoid-Pirate style (ZeroMQ Guide, ch. 4): the peer pings every heartbeat,
any message from the server counts as life, and after ``liveness`` silent
heartbeats (or an ``Unknown`` answer from a restarted server) it drops the
connection, opens a new one and says hello again, with back-off.  After the
session ends the caller's ``on_connect`` re-sends its state, since the session
id and the job ids survive the reconnection.

Two transports carry the frames: :class:`ZmqTransport`, a pyzmq DEALER (the
worker's, and a client's with CURVE keys), and the lean
:class:`jobqueue.zmtp.Dealer` (a client without keys: no pyzmq import).  The
messages come from ``proto``: :mod:`jobqueue.protocol` (msgspec) or
:mod:`jobqueue.wire` (the client's lean copy); both encode the same bytes.

A poll loop either calls :meth:`Connection.wait`, or registers
:attr:`Connection.socket` (a zmq socket, or the lean transport's fd, which
changes on reconnection: register it afresh each time) for
:meth:`Connection.poll_events`; it calls :meth:`Connection.receive` when that
is ready, and :meth:`Connection.tick` after every wake-up.
"""

from __future__ import annotations

import errno

from . import config

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing them would slow jq down
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    import zmq

    from .protocol import Message  # or its mirror in jobqueue.wire, on a lean connection

#: Frames at least this big are handed to ZeroMQ without a copy.
COPY_THRESHOLD = 64 * 1024
#: Lean handshakes cut short in a row before we blame CURVE (see HandshakeWatch.CLOSED_LIMIT).
HANDSHAKE_REJECTED_LIMIT = 3
#: Poll event bits (the same values in zmq and select).
POLLIN, POLLOUT = 1, 4


class ServerLost(Exception):
    """The server did not answer in time; the message says what to do."""


class Refused(Exception):
    """The server refused this peer for good (version, role, authentication)."""


class AuthFailed(Refused):
    """The CURVE handshake failed: a key the server does not list, or wrong keys."""


class ZmqTransport:
    """A pyzmq DEALER socket (with CURVE keys when ``security`` is set)."""

    def __init__(self, endpoint: str, max_message: int, security: Security | None, role: str,
                 context: zmq.Context[Any] | None) -> None:
        import zmq

        self._zmq = zmq
        sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        self.handshakes: HandshakeWatch | None = None
        if security is not None:
            security.apply_client(sock)
            self.handshakes = HandshakeWatch(sock, endpoint, security, role)
        sock.connect(endpoint)
        self.socket = sock

    @property
    def pollable(self) -> zmq.Socket[Any]:
        return self.socket

    def poll_events(self) -> int:
        return POLLIN

    def next_wakeup(self, now: float) -> float | None:
        return None

    def maintain(self, now: float) -> None:
        if self.handshakes is not None:
            self.handshakes.check()

    def send(self, data: bytes) -> bool:
        try:  # big frames (stream chunks) go without a copy
            self.socket.send(data, self._zmq.NOBLOCK, copy=len(data) < COPY_THRESHOLD)
        except self._zmq.Again:
            return False
        return True

    def receive(self, now: float) -> list[bytes]:
        """Every message waiting: one per frame (the server sends a round's in one go)."""
        out: list[bytes] = []
        while True:
            try:
                out += self.socket.recv_multipart(self._zmq.NOBLOCK)
            except self._zmq.Again:
                return out

    def close(self, linger: float) -> None:
        if self.handshakes is not None:
            self.handshakes.close(self.socket)
            self.handshakes = None
        self.socket.close(linger=int(linger * 1000))


class Connection:
    def __init__(
        self,
        endpoint: str,
        hello: Callable[[], Any],
        decode: Callable[[bytes], Any],
        *,
        proto: ModuleType | None = None,
        lean: bool = False,
        connect_timeout: float = config.CONNECT_TIMEOUT,
        grace: float = config.SERVER_GRACE,
        security: Security | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        """``proto`` supplies the messages (default :mod:`jobqueue.protocol`); ``lean``
        picks the pyzmq-free transport (refused with CURVE keys, which need pyzmq)."""
        if proto is None:
            from . import protocol

            proto = protocol
        if lean and security is not None:
            raise ValueError("the lean transport speaks no CURVE: use pyzmq when keys are given")
        self.endpoint = endpoint
        self._hello = hello
        self._decode = decode
        self.proto = proto
        self.lean = lean
        self.connect_timeout = connect_timeout
        self.grace = grace
        self.security = security
        self.context = context
        self.heartbeat = config.HEARTBEAT
        self.liveness = config.LIVENESS
        self.transport: Any = None  # ZmqTransport or zmtp.Dealer
        self.welcomed = False  # the current connection got its Welcome
        self.ever_welcomed = False
        self.server_id = ""
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._connected_at = 0.0
        self._lost_since: float | None = None
        self._backoff = 0.0
        self._rejected = 0  # lean handshakes the server cut short in a row
        #: Called with the connection's time after (re)connecting: returns the
        #: messages that restore this peer's state on the server.
        self.on_connect: Callable[[], list[Any]] = lambda: []

    # --- connection life -----------------------------------------------------------------

    @property
    def socket(self) -> Any:
        """What to register in a poller (None while closed)."""
        return None if self.transport is None else self.transport.pollable

    def poll_events(self) -> int:
        """The events to poll :attr:`socket` for (POLLIN, plus POLLOUT while output waits)."""
        return POLLIN if self.transport is None else self.transport.poll_events()

    def wait(self, fds: list[int], timeout: float) -> tuple[bool, set[int]]:
        """Wait up to ``timeout`` seconds for this connection (to have input, or room for its
        output) or for one of ``fds`` to be readable: (connection ready, the ready fds)."""
        ms = int(timeout * 1000)
        if self.lean:
            import select

            lean_poller = select.poll()
            if self.transport is not None:
                lean_poller.register(self.transport.fileno(), self.transport.poll_events())
            for fd in fds:
                lean_poller.register(fd, select.POLLIN)
            events = dict(lean_poller.poll(ms))
            ready = self.transport is not None and self.transport.fileno() in events
            return ready, {fd for fd in fds if fd in events}
        import zmq

        poller = zmq.Poller()
        if self.socket is not None:
            poller.register(self.socket, zmq.POLLIN)
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        try:
            zmq_events = dict(poller.poll(ms))
        except zmq.ZMQError as e:
            if e.errno != errno.EINTR:
                raise
            zmq_events = {}
        return self.socket is not None and self.socket in zmq_events, {fd for fd in fds if fd in zmq_events}

    def open(self, now: float) -> None:
        """(Re)connect and say hello; queued stale messages die with the old connection."""
        self._connected_at = self._last_heard = self._last_ping = now
        self._start_transport()

    def _start_transport(self) -> None:
        """A new connection carrying the hello and this peer's state (liveness timers kept)."""
        self.close(linger=0)
        max_message = self.proto.MAX_MESSAGE_SIZE + 4096
        if self.lean:
            from .zmtp import Dealer, ZmtpError

            try:
                self.transport = Dealer(self.endpoint, max_message)
            except ZmtpError as e:
                raise ServerLost(str(e)) from None
        else:
            self.transport = ZmqTransport(self.endpoint, max_message, self.security, self._role(), self.context)
        self.welcomed = False
        self.send(self._hello())
        for message in self.on_connect():
            self.send(message)

    def _role(self) -> str:
        return "worker" if type(self._hello()).__name__ == "WorkerHello" else "client"

    def close(self, linger: int = 0) -> None:
        """Close the connection, after up to ``linger`` ms spent sending what is queued."""
        if self.transport is not None:
            self.transport.close(linger / 1000)
            self.transport = None

    def send(self, message: Any) -> bool:
        """Queue a message for the server; False if it had to be dropped
        (queue full while the server is away: the stream offsets recover it)."""
        if self.transport is None:
            return False
        try:
            return bool(self.transport.send(self.proto.encode(message)))
        except ConnectionError:
            return False  # the next receive or tick reconnects

    # --- events ----------------------------------------------------------------------

    def receive(self, now: float) -> list[Message]:
        """Every message waiting, liveness ones handled here."""
        out: list[Message] = []
        for data in self._frames(now):
            self._last_heard = now
            try:
                message = self._decode(data)
            except self.proto.ProtocolError as e:
                raise Refused(f"protocol error from the server: {e}") from None
            if isinstance(message, self.proto.Welcome):
                self._on_welcome(message)
                out.append(message)
            elif isinstance(message, self.proto.Unknown):
                self.open(now)  # the server restarted: start a new session
                break  # the rest came on the old one
            elif isinstance(message, self.proto.Refused):
                raise Refused(message.reason)
            elif not isinstance(message, self.proto.Pong):
                out.append(message)
        return out

    def _frames(self, now: float) -> list[bytes]:
        """Frames from the transport; a lean connection that dropped is made again at once."""
        if self.transport is None:
            return []
        if not self.lean:
            return list(self.transport.receive(now))
        from .zmtp import HandshakeRejected, MechanismMismatch, ZmtpError

        try:
            frames = list(self.transport.receive(now))
            if self.transport.is_open:
                self._rejected = 0
            return frames
        except MechanismMismatch as e:
            raise AuthFailed(f"authentication failed: the server at {self.endpoint} uses {e} keys: "
                             "give --key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)") from None
        except HandshakeRejected as e:
            self._rejected += 1
            if self._rejected >= HANDSHAKE_REJECTED_LIMIT:
                raise AuthFailed(f"authentication failed: {e} (repeatedly): it probably uses CURVE keys: give "
                                 "--key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)") from None
        except ZmtpError as e:
            if not self.transport.is_open:
                raise ServerLost(f"cannot talk to the server at {self.endpoint}: {e}") from None
        except ConnectionError:
            pass
        self._start_transport()
        return []

    def _on_welcome(self, welcome: Any) -> None:
        self.welcomed = self.ever_welcomed = True
        self.server_id = welcome.server_id
        self.heartbeat = welcome.heartbeat
        self.liveness = welcome.liveness
        self._lost_since = None
        self._backoff = 0.0

    def tick(self, now: float) -> None:
        """Heartbeat, and reconnect or give up when the server is silent; writes what
        was sent since the last tick (a lean connection sends once a round)."""
        if self.transport is None:
            self.open(now)
            return
        if now - self._last_ping >= self.heartbeat:
            self._last_ping = now
            self.send(self.proto.Ping())
        try:
            self.transport.maintain(now)
        except ConnectionError:
            self._start_transport()
        silent = now - self._last_heard
        if not self.ever_welcomed and now - self._connected_at > self.connect_timeout:
            raise ServerLost(
                f"cannot reach the server at {self.endpoint} "
                f"(no answer in {self.connect_timeout:g}s): is jobqueue-server running there"
                f"{'' if self.security else ' (and if it uses CURVE keys, did you give --key and --server-key)'}?"
            )
        if silent > self.heartbeat * self.liveness:
            if self._lost_since is None:
                self._lost_since = self._last_heard
            if now - self._lost_since > self.grace:
                raise ServerLost(
                    f"lost the server at {self.endpoint} for more than {self.grace:g}s; giving up"
                )
            if self.ever_welcomed and now - self._connected_at > self._backoff:
                self._backoff = min(max(self.heartbeat, self._backoff * 2), 32.0)
                self.open(now)
                return

    def next_wakeup(self, now: float) -> float:
        """Seconds until :meth:`tick` must run again."""
        wakeup = max(0.0, min(self._last_ping + self.heartbeat - now, self.heartbeat))
        transport = None if self.transport is None else self.transport.next_wakeup(now)
        return wakeup if transport is None else min(wakeup, transport)


class Security:
    """CURVE keys of a client or worker (see :mod:`jobqueue.security`)."""

    def __init__(self, public: bytes, secret: bytes, server_public: bytes) -> None:
        self.public, self.secret, self.server_public = public, secret, server_public

    def apply_client(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class HandshakeWatch:
    """Turns failed CURVE handshakes, seen by a socket monitor, into :class:`AuthFailed`
    (libzmq would otherwise stay silent, or retry forever)."""

    #: Connections the server closed mid-handshake before we blame the server key.
    CLOSED_LIMIT = 3

    def __init__(self, sock: zmq.Socket[Any], endpoint: str, security: Security, role: str) -> None:
        import zmq

        self.endpoint, self.security, self.role = endpoint, security, role
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.closed = 0

    def close(self, sock: zmq.Socket[Any]) -> None:
        sock.disable_monitor()
        self.monitor.close(linger=0)

    def check(self) -> None:
        """Raise :class:`AuthFailed` if the handshake failed for good."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.closed = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AuthFailed(self._not_listed(value))
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                raise AuthFailed(self._protocol(value))
            else:
                self.closed += 1
                if self.closed >= self.CLOSED_LIMIT:
                    raise AuthFailed(f"authentication failed: the server at {self.endpoint} closed the "
                                     "connection during the CURVE handshake: either --server-key "
                                     "($JOBQUEUE_SERVER_KEY) is not that server's public key, or the "
                                     "server uses no keys")

    def _not_listed(self, status: int) -> str:
        public = self.security.public.decode()
        if status == 400:
            return (f"authentication failed: the server at {self.endpoint} does not accept our key "
                    f"{public}: ask its admin to add it to --{self.role}s (or check --key)")
        return f"authentication failed: the server at {self.endpoint} could not check our key (ZAP {status})"

    def _protocol(self, code: int) -> str:
        import zmq

        if code == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (f"authentication failed: the server at {self.endpoint} does not use CURVE keys: "
                    "leave out --key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)")
        return (f"authentication failed: CURVE handshake with {self.endpoint} failed (protocol error "
                f"{code:#x}): is --server-key ($JOBQUEUE_SERVER_KEY) that server's public key?")
