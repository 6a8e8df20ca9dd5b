"""A peer's link to the server, shared by workers and clients.

Paranoid-Pirate style (ZeroMQ Guide, ch. 4): the peer pings every heartbeat,
any message from the server counts as life, and after ``liveness`` silent
heartbeats (or an :class:`~jobqueue.protocol.Unknown` answer from a restarted
server) it drops the socket, opens a new one and says hello again, with
back-off.  After the session ends the caller's ``on_connect`` re-sends its
state, since the session id and the job ids survive the reconnection.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from . import config
from . import protocol as p

#: Frames at least this big are handed to ZeroMQ without a copy.
COPY_THRESHOLD = 64 * 1024


class ServerLost(Exception):
    """The server did not answer in time; the message says what to do."""


class Refused(Exception):
    """The server refused this peer for good (version, role, authentication)."""


class AuthFailed(Refused):
    """The CURVE handshake failed: a key the server does not list, or wrong keys."""


class Connection:
    def __init__(
        self,
        endpoint: str,
        hello: Callable[[], p.Message],
        decode: Callable[[bytes], p.Message],
        *,
        connect_timeout: float = config.CONNECT_TIMEOUT,
        grace: float = config.SERVER_GRACE,
        security: Security | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._hello = hello
        self._decode = decode
        self.connect_timeout = connect_timeout
        self.grace = grace
        self.security = security
        self.context = context or zmq.Context.instance()
        self.heartbeat = config.HEARTBEAT
        self.liveness = config.LIVENESS
        self.socket: zmq.Socket | None = None
        self._handshakes: HandshakeWatch | None = None
        self.welcomed = False  # the current connection got its Welcome
        self.ever_welcomed = False
        self.server_id = ""
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._connected_at = 0.0
        self._lost_since: float | None = None
        self._backoff = 0.0
        #: Called with the connection's time after (re)connecting: returns the
        #: messages that restore this peer's state on the server.
        self.on_connect: Callable[[], list[p.Message]] = lambda: []

    # --- socket life ---------------------------------------------------------------

    def open(self, now: float) -> None:
        """(Re)create the socket and say hello; queued stale messages die with the old one."""
        self.close(linger=0)
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_SIZE + 4096)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        if self.security is not None:
            self.security.apply_client(sock)
            self._handshakes = HandshakeWatch(sock, self.endpoint, self.security, self._role())
        sock.connect(self.endpoint)
        self.socket = sock
        self.welcomed = False
        self._connected_at = self._last_heard = self._last_ping = now
        self.send(self._hello())
        for message in self.on_connect():
            self.send(message)

    def _role(self) -> str:
        return "worker" if isinstance(self._hello(), p.WorkerHello) else "client"

    def close(self, linger: int = 0) -> None:
        if self._handshakes is not None and self.socket is not None:
            self._handshakes.close(self.socket)
            self._handshakes = None
        if self.socket is not None:
            self.socket.close(linger=linger)
            self.socket = None

    def send(self, message: p.Message) -> bool:
        """Queue a message for the server; False if it had to be dropped
        (socket full while the server is away: the stream offsets recover it)."""
        if self.socket is None:
            return False
        data = p.encode(message)
        try:  # big frames (stream chunks) go without a copy
            self.socket.send(data, zmq.NOBLOCK, copy=len(data) < COPY_THRESHOLD)
        except zmq.Again:
            return False
        return True

    # --- events ----------------------------------------------------------------------

    def receive(self, now: float) -> list[p.Message]:
        """Every message waiting on the socket, liveness ones handled here."""
        out: list[p.Message] = []
        while self.socket is not None:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._last_heard = now
            if len(frames) != 1:
                continue  # not from a jobqueue server: ignore
            try:
                message = self._decode(frames[0])
            except p.ProtocolError as e:
                raise Refused(f"protocol error from the server: {e}") from None
            if isinstance(message, p.Welcome):
                self._on_welcome(message)
                out.append(message)
            elif isinstance(message, p.Unknown):
                self.open(now)  # the server restarted: start a new session
            elif isinstance(message, p.Refused):
                raise Refused(message.reason)
            elif not isinstance(message, p.Pong):
                out.append(message)
        return out

    def _on_welcome(self, welcome: p.Welcome) -> None:
        self.welcomed = self.ever_welcomed = True
        self.server_id = welcome.server_id
        self.heartbeat = welcome.heartbeat
        self.liveness = welcome.liveness
        self._lost_since = None
        self._backoff = 0.0

    def tick(self, now: float) -> None:
        """Heartbeat, and reconnect or give up when the server is silent."""
        if self.socket is None:
            self.open(now)
            return
        if self._handshakes is not None:
            self._handshakes.check()
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
        if now - self._last_ping >= self.heartbeat:
            self._last_ping = now
            self.send(p.Ping())

    def next_wakeup(self, now: float) -> float:
        """Seconds until :meth:`tick` must run again."""
        return max(0.0, min(self._last_ping + self.heartbeat - now, self.heartbeat))

    @property
    def server_lost(self) -> bool:
        return self._lost_since is not None


class Security:
    """CURVE keys of a client or worker (see :mod:`jobqueue.security`)."""

    def __init__(self, public: bytes, secret: bytes, server_public: bytes) -> None:
        self.public, self.secret, self.server_public = public, secret, server_public

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class HandshakeWatch:
    """Turns failed CURVE handshakes, seen by a socket monitor, into :class:`AuthFailed`
    (libzmq would otherwise stay silent, or retry forever)."""

    #: Connections the server closed mid-handshake before we blame the server key.
    CLOSED_LIMIT = 3

    def __init__(self, sock: zmq.Socket, endpoint: str, security: Security, role: str) -> None:
        self.endpoint, self.security, self.role = endpoint, security, role
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.closed = 0

    def close(self, sock: zmq.Socket) -> None:
        sock.disable_monitor()
        self.monitor.close(linger=0)

    def check(self) -> None:
        """Raise :class:`AuthFailed` if the handshake failed for good."""
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
        if code == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (f"authentication failed: the server at {self.endpoint} does not use CURVE keys: "
                    "leave out --key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)")
        return (f"authentication failed: CURVE handshake with {self.endpoint} failed (protocol error "
                f"{code:#x}): is --server-key ($JOBQUEUE_SERVER_KEY) that server's public key?")


def monotonic() -> float:
    return time.monotonic()
