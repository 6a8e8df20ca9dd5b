"""A peer's link to the server, shared by workers, clients and control commands.

Paranoid-Pirate style (ZeroMQ Guide, ch. 4): the peer pings every heartbeat,
any message from the server counts as life, and after ``liveness`` silent
heartbeats (or an ``Unknown`` answer from a restarted server) it drops the
connection, opens a new one and says hello again, with back-off.  After the
session ends the caller's ``on_connect`` re-sends its state, since the session
id and the job ids survive the reconnection.

Two transports carry the frames (:mod:`jobqueue.transports`: the lean ZMTP one
without keys, pyzmq's with CURVE keys).  The messages come from ``proto``: :mod:`jobqueue.protocol`
(msgspec) or :mod:`jobqueue.wire` (the client's lean copy); both encode the
same bytes.

A poll loop either calls :meth:`Connection.wait`, or registers
:attr:`Connection.socket` (a zmq socket, or the lean transport's fd, which
changes on reconnection: register it afresh each time) for
:meth:`Connection.poll_events`; it calls :meth:`Connection.receive` when that
is ready, and :meth:`Connection.tick` after every wake-up.  Times are
``time.monotonic()`` seconds, durations seconds.
"""

from __future__ import annotations

import time

from . import config
from .transports import (  # (the errors are the connection's: re-exported)
    COPY_THRESHOLD,
    POLLIN,
    AuthFailed,
    Reconnect,
    Refused,
    Security,
    ServerLost,
    transport_factory,
    wait_without_transport,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing them would slow jq down
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    import zmq

    from .protocol import Message  # or its mirror in jobqueue.wire, on a lean connection
    from .transports import Transport, TransportFactory

__all__ = ["AuthFailed", "COPY_THRESHOLD", "Connection", "Reconnect", "Refused", "Security", "ServerLost",
           "transport_factory"]


class Connection:
    def __init__(
        self,
        endpoint: str,
        hello: Callable[[], Any] | None,
        decode: Callable[[bytes | bytearray], Any],
        *,
        proto: ModuleType | None = None,
        connect_timeout: float = config.CONNECT_TIMEOUT,
        grace: float = config.SERVER_GRACE,
        security: Security | None = None,
        context: zmq.Context[Any] | None = None,
        role: str = "client",
        transport: TransportFactory | None = None,
    ) -> None:
        """``hello``: the message that opens a session (None: sessionless requests, see
        :meth:`request`); ``proto`` supplies the messages (default :mod:`jobqueue.protocol`);
        ``security``: CURVE keys (they choose the pyzmq transport); ``transport``: another
        way to make connections (the deterministic simulation's network)."""
        if proto is None:
            from . import protocol

            proto = protocol
        self.endpoint = endpoint
        self._hello = hello
        self._decode = decode
        self.proto = proto
        #: The messages the connection answers itself (the others go to its owner).
        self._liveness = frozenset({proto.Welcome, proto.Unknown, proto.Refused, proto.Pong})
        self.connect_timeout = connect_timeout
        self.grace = grace
        self.security = security
        self._new_transport = transport or transport_factory(security, role, context)
        self.heartbeat = config.HEARTBEAT
        self.liveness = config.LIVENESS
        self.transport: Transport | None = None
        self.welcomed = False  # the current connection got its Welcome
        self.ever_welcomed = False
        self.server_id = ""
        #: Counts the connections made (a message sent on one is lost with it).
        self.generation = 0
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._connected_at = 0.0
        self._lost_since: float | None = None
        self._backoff = 0.0
        #: When the latest ping the server answered on this connection was sent (0: none):
        #: it reads a connection in order, so it has everything sent before that ping.
        self.answered_at = 0.0
        self._pings: list[float] = []  # when this connection's unanswered pings were sent, in order
        #: Called with the connection's time after (re)connecting: returns the
        #: messages that restore this peer's state on the server.
        self.on_connect: Callable[[], list[Any]] = lambda: []

    # --- connection life -----------------------------------------------------------------

    @property
    def socket(self) -> Any:
        """What to register in a poller (None while closed)."""
        return None if self.transport is None else self.transport.pollable

    @property
    def last_heard(self) -> float:
        """When the server was last heard from (or the connection opened)."""
        return self._last_heard

    def poll_events(self) -> int:
        """The events to poll :attr:`socket` for (POLLIN, plus POLLOUT while output waits)."""
        return POLLIN if self.transport is None else self.transport.poll_events()

    def wait(self, fds: list[int], timeout: float, errors: tuple[int, ...] = (),
             writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]:
        """Wait up to ``timeout`` seconds for this connection (to have input, or room for its
        output), for one of ``fds`` to be readable, one of ``writable`` to have room, or
        one of ``errors`` to be in error (the write end of a pipe whose reader left):
        (connection ready, the ready fds)."""
        if self.transport is None:
            return wait_without_transport(fds, timeout, errors, writable)
        return self.transport.wait(fds, timeout, errors, writable)

    def open(self, now: float) -> None:
        """(Re)connect and say hello; queued stale messages die with the old connection."""
        self._connected_at = self._last_heard = self._last_ping = now
        self._start_transport()

    def _start_transport(self) -> None:
        """A new connection carrying the hello and this peer's state (liveness timers kept)."""
        self.close()
        self.transport = self._new_transport(self.endpoint, self.proto.MAX_MESSAGE_SIZE + 4096)
        self.generation += 1
        self.welcomed = False
        self.answered_at, self._pings = 0.0, []
        if self._hello is not None:
            hello = self._hello()
            hello.previous_server = self.server_id  # tells a restarted server that it is one
            self.send(hello)
        for message in self.on_connect():
            self.send(message)

    def close(self, wait: float = 0.0) -> None:
        """Close the connection, after up to ``wait`` seconds spent sending what is queued."""
        if self.transport is not None:
            self.transport.close(wait)
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

    def ping(self) -> None:
        """Send a ping; its Pong shows the server read everything sent before it
        (:attr:`answered_at`)."""
        if self.send(self.proto.Ping()):
            self._pings.append(time.monotonic())

    def request(self, message: Any, timeout: float, now: Callable[[], float]) -> Any:
        """Send one sessionless request (status, cancel, drain) and return the reply
        (raises :class:`ServerLost` after ``timeout`` seconds, :class:`Refused` if refused)."""
        start = now()
        self.open(start)
        self.send(message)
        try:
            while True:
                left = start + timeout - now()
                if left <= 0:
                    hint = "" if self.security else " (and if it uses CURVE keys, did you give --key and --server-key)"
                    raise ServerLost(f"no answer from the server at {self.endpoint} in {timeout:g}s: "
                                     f"is jobqueue-server running there{hint}?")
                assert self.transport is not None
                self.transport.wait([], min(left, 0.1))
                for reply in self.receive(now()):
                    return reply
                if self.transport is None:  # it dropped: ask again on a new connection
                    self.open(now())
                    self.send(message)
                else:
                    self._maintain(now())
        finally:
            self.close()

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
            if type(message) not in self._liveness:  # the usual case: one test
                out.append(message)
            elif isinstance(message, self.proto.Welcome):
                self._on_welcome(message)
                out.append(message)
            elif isinstance(message, self.proto.Unknown):
                self.open(now)  # the server restarted: start a new session
                break  # the rest came on the old one
            elif isinstance(message, self.proto.Refused):
                raise Refused(message.reason)
            elif isinstance(message, self.proto.Pong) and self._pings:  # one answer per ping, in order
                self.answered_at = self._pings.pop(0)
        return out

    def _frames(self, now: float) -> list[bytes | bytearray]:
        """Frames from the transport; a connection that dropped is made again at once."""
        if self.transport is None:
            return []
        try:
            return self.transport.receive(now)
        except Reconnect:
            self._start_transport()
            return []

    def _maintain(self, now: float) -> None:
        assert self.transport is not None
        try:
            self.transport.maintain(now)
        except Reconnect:
            self._start_transport()

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
        if self._last_ping + self.heartbeat <= now:  # the very expression next_wakeup() gives
            self._last_ping = now
            self.ping()
        self._maintain(now)
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
