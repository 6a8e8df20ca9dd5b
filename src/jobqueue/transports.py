"""The frames of a peer's connection to the server, behind one interface
(:class:`Transport`), chosen once by :func:`transport_factory`: without keys the
lean :class:`LeanTransport` (:mod:`jobqueue.zmtp`: no pyzmq import, and a round's
messages leave in one write), with CURVE keys :class:`ZmqTransport` (a pyzmq
DEALER, its handshake watched by :class:`HandshakeWatch`).  The errors they raise
are the connection's (:class:`Reconnect`, :class:`ServerLost`, :class:`AuthFailed`).
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing them would slow jq down
    from collections.abc import Callable
    from typing import Any, Protocol

    import zmq


    class Transport(Protocol):
        """One connection's frames, whatever carries them.  ``receive`` and ``maintain``
        raise :class:`Reconnect` when the connection dropped (the caller opens a new
        one), :class:`ServerLost` or :class:`AuthFailed` when retrying cannot help."""

        @property
        def pollable(self) -> Any:
            """What to register in a poller (an fd or a zmq socket)."""

        def poll_events(self) -> int: ...
        def wait(self, fds: list[int], timeout: float, errors: tuple[int, ...] = (),
                 writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]: ...
        def next_wakeup(self, now: float) -> float | None: ...
        def maintain(self, now: float) -> None: ...
        def send(self, data: bytes) -> bool: ...
        def receive(self, now: float) -> list[bytes | bytearray]: ...
        def close(self, wait: float) -> None: ...

    TransportFactory = Callable[[str, int], Transport]

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


class Reconnect(Exception):
    """The transport's connection dropped: open a new one."""


def transport_factory(security: Security | None, role: str,
                      context: zmq.Context[Any] | None = None) -> TransportFactory:
    """How this peer makes its connections, decided once: CURVE keys need pyzmq;
    without them the lean ZMTP transport (jq's start-up, and a worker's few
    messages per job in one write a round)."""
    if security is None:
        return LeanTransports()
    return lambda endpoint, max_message: ZmqTransport(endpoint, max_message, security, role, context)


class LeanTransports:
    """Makes :class:`LeanTransport` connections; counts handshakes cut short in a row
    across them (a server that uses CURVE closes ours during the handshake)."""

    def __init__(self) -> None:
        self.rejected = 0

    def __call__(self, endpoint: str, max_message: int) -> LeanTransport:
        return LeanTransport(endpoint, max_message, self)


class LeanTransport:
    """The lean DEALER of :mod:`jobqueue.zmtp` (NULL mechanism), its errors in this module's terms."""

    def __init__(self, endpoint: str, max_message: int, factory: LeanTransports) -> None:
        from .zmtp import Dealer, HandshakeRejected, MechanismMismatch, ZmtpError

        self.endpoint = endpoint
        self.factory = factory
        #: What receive() tells apart (imported here once, not at each receive: a loop round).
        self._errors = (MechanismMismatch, HandshakeRejected, ZmtpError)
        try:
            self.dealer = Dealer(endpoint, max_message)
        except ZmtpError as e:
            raise ServerLost(str(e)) from None

    @property
    def pollable(self) -> int:
        return self.dealer.fileno()

    def poll_events(self) -> int:
        return self.dealer.poll_events()

    def wait(self, fds: list[int], timeout: float, errors: tuple[int, ...] = (),
             writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]:
        own = self.dealer.fileno()
        return _select_poll(fds, timeout, errors, writable, own, self.dealer.poll_events())

    def next_wakeup(self, now: float) -> float | None:
        return self.dealer.next_wakeup(now)

    def maintain(self, now: float) -> None:
        try:
            self.dealer.maintain(now)
        except ConnectionError:
            raise Reconnect() from None

    def send(self, data: bytes) -> bool:
        return self.dealer.send(data)

    def receive(self, now: float) -> list[bytes | bytearray]:
        MechanismMismatch, HandshakeRejected, ZmtpError = self._errors
        try:
            frames = self.dealer.receive(now)
            if self.dealer.is_open:
                self.factory.rejected = 0
            return frames
        except MechanismMismatch as e:
            raise AuthFailed(f"authentication failed: the server at {self.endpoint} uses {e} keys: "
                             "give --key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)") from None
        except HandshakeRejected as e:
            self.factory.rejected += 1
            if self.factory.rejected >= HANDSHAKE_REJECTED_LIMIT:
                raise AuthFailed(f"authentication failed: {e} (repeatedly): it probably uses CURVE keys: give "
                                 "--key and --server-key ($JOBQUEUE_KEY, $JOBQUEUE_SERVER_KEY)") from None
        except ZmtpError as e:
            if not self.dealer.is_open:
                raise ServerLost(f"cannot talk to the server at {self.endpoint}: {e}") from None
        except ConnectionError:
            pass
        raise Reconnect()

    def close(self, wait: float) -> None:
        self.dealer.close(wait)


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

    def wait(self, fds: list[int], timeout: float, errors: tuple[int, ...] = (),
             writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.handshakes is not None:  # a failed handshake wakes us too
            poller.register(self.handshakes.monitor, zmq.POLLIN)
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        for fd in errors:
            poller.register(fd, zmq.POLLERR)
        for fd in writable:
            poller.register(fd, zmq.POLLOUT)
        try:
            events = dict(poller.poll(int(timeout * 1000)))
        except zmq.ZMQError as e:
            if e.errno != errno.EINTR:
                raise
            events = {}
        return self.socket in events, {fd for fd in (*fds, *errors, *writable) if fd in events}

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

    def receive(self, now: float) -> list[bytes | bytearray]:
        """Every message waiting: one per frame (the server sends a round's in one go)."""
        out: list[bytes | bytearray] = []
        while True:
            try:
                out += self.socket.recv_multipart(self._zmq.NOBLOCK)
            except self._zmq.Again:
                return out

    def close(self, wait: float) -> None:
        if self.handshakes is not None:
            self.handshakes.close(self.socket)
            self.handshakes = None
        self.socket.close(linger=int(wait * 1000))


def _select_poll(fds: list[int], timeout: float, errors: tuple[int, ...], writable: tuple[int, ...],
                 own: int = -1, own_events: int = 0) -> tuple[bool, set[int]]:
    """poll(2) on plain fds: ``own`` (the connection's, if any) for ``own_events``, ``fds``
    for input, ``writable`` for room, ``errors`` for errors only (POLLERR and POLLHUP are
    always reported).  A signal cuts the wait short: nothing ready then."""
    import select

    poller = select.poll()
    if own >= 0:
        poller.register(own, own_events)
    for fd in fds:
        poller.register(fd, select.POLLIN)
    for fd in errors:
        poller.register(fd, 0)
    for fd in writable:
        poller.register(fd, select.POLLOUT)
    try:
        events = dict(poller.poll(int(timeout * 1000)))
    except InterruptedError:
        events = {}
    return own in events, {fd for fd in (*fds, *errors, *writable) if fd in events}


def wait_without_transport(fds: list[int], timeout: float, errors: tuple[int, ...] = (),
                            writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]:
    return _select_poll(fds, timeout, errors, writable)


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
