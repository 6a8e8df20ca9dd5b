"""The simulated world's clock, network and server: everything deterministic from a seed.

:class:`Sim` is a discrete-event loop over simulated time.  :class:`SimTransport`
implements :class:`jobqueue.connection.Transport`, so the real
:class:`~jobqueue.connection.Connection` (heartbeats, reconnection, back-off,
``Unknown`` after a restart) runs over it unchanged.  A connection behaves as a
lean ZMTP connection does: frames arrive in order, each direction after a
random delay; a connection made while the server is down waits for it; when
the server dies, or the peer's link is cut, the connection breaks and what was
in flight is lost (the peer notices on its next receive and reconnects).  A
frozen link holds frames without breaking (a silent network cut).
:class:`SimServer` is the real :class:`~jobqueue.broker.Broker` behind a
ROUTER-like routing table; a crash replaces it with a new, empty one.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobqueue import protocol as p
from jobqueue.broker import Broker

HEARTBEAT = 1.0
LIVENESS = 5


class Sim:
    """Simulated time and the events scheduled in it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def step(self) -> bool:
        """Run the next event; False when none is left."""
        if not self._queue:
            return False
        self.now, _, action = heapq.heappop(self._queue)
        action()
        return True

    def latency(self) -> float:
        """One frame's delay: mostly small, sometimes slow."""
        return self.rng.choice((0.0005, 0.001, 0.002, 0.005, 0.02, 0.1))


@dataclass(eq=False)
class Link:
    """A peer's network path to the server: cut (connections break) or frozen (frames held)."""

    frozen: bool = False
    held: list[Callable[[], None]] = field(default_factory=list)

    def thaw(self) -> None:
        self.frozen = False
        held, self.held = self.held, []
        for deliver in held:
            deliver()


class SimServer:
    """The broker behind a routing table of live connections."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.up = False
        self.incarnation = 0
        self.broker: Broker | None = None
        self.connections: dict[bytes, SimTransport] = {}
        self._ids = itertools.count(1)
        self.waiting: list[SimTransport] = []  # connections made while it was down
        self._tick_at: float | None = None

    def start(self) -> None:
        self.up = True
        self.incarnation += 1
        self.broker = Broker(self.sim.now, server_id=f"server-{self.incarnation}", heartbeat=HEARTBEAT,
                             liveness=LIVENESS, wall_clock_ns=int(self.sim.now * 1e9) + self.incarnation)
        waiting, self.waiting = self.waiting, []
        for transport in waiting:
            transport.connect()
        self._schedule_tick()

    def crash(self) -> None:
        """SIGKILL: memory gone, every connection broken, frames in flight lost."""
        self.up = False
        self.broker = None
        connections, self.connections = self.connections, {}
        for transport in connections.values():
            transport.break_()

    def accept(self, transport: SimTransport) -> bytes:
        identity = next(self._ids).to_bytes(4, "big") + bytes([self.incarnation % 256])
        self.connections[identity] = transport
        return identity

    def deliver(self, identity: bytes, frame: bytes) -> None:
        if self.broker is None or identity not in self.connections:
            return
        self._route(self.broker.receive(identity, frame, self.sim.now))
        self._schedule_tick()

    def disconnected(self, identity: bytes) -> None:
        self.connections.pop(identity, None)

    def _route(self, sends: list[Any]) -> None:
        assert self.broker is not None
        for send in sends:
            frame = p.encode(send.message) if isinstance(send.message, p.Message) else bytes(send.message)
            transport = self.connections.get(send.peer)
            if transport is None:  # ROUTER_MANDATORY: EHOSTUNREACH
                self._route(self.broker.peer_gone(send.peer, self.sim.now))
            else:
                transport.from_server(frame)

    def _schedule_tick(self) -> None:
        if self.broker is None:
            return
        deadline = self.broker.next_deadline()
        when = self.sim.now + 1.0 if deadline is None else min(deadline, self.sim.now + 1.0)
        if self._tick_at is not None and self._tick_at <= when:
            return
        self._tick_at = when
        incarnation = self.incarnation
        self.sim.at(when, lambda: self._tick(incarnation))

    def _tick(self, incarnation: int) -> None:
        self._tick_at = None
        if self.broker is None or incarnation != self.incarnation:
            return
        self._route(self.broker.tick(self.sim.now))
        self._schedule_tick()


class SimTransport:
    """One connection of a peer to the simulated server (see the module's docstring)."""

    def __init__(self, sim: Sim, server: SimServer, link: Link, on_ready: Callable[[], None]) -> None:
        self.sim, self.server, self.link = sim, server, link
        self.on_ready = on_ready  # wakes the peer: frames arrived, or the connection broke
        self.identity: bytes | None = None
        self.inbox: list[bytes] = []
        self.pending: list[bytes] = []  # sent before the connection was up
        self.broken = False
        self.closed = False
        self._out_clock = 0.0  # frames leave in order: each after the previous one
        self._in_clock = 0.0
        if server.up:
            self.connect()
        else:
            server.waiting.append(self)

    def connect(self) -> None:
        if self.closed or self.broken:
            return
        self.identity = self.server.accept(self)
        pending, self.pending = self.pending, []
        for frame in pending:
            self.send(frame)

    def break_(self) -> None:
        self.broken = True
        self.identity = None
        self.sim.after(0.0, self.on_ready)

    # --- the Transport interface -----------------------------------------------------------------

    @property
    def pollable(self) -> Any:
        return self

    def poll_events(self) -> int:
        return 1

    def wait(self, fds: list[int], timeout: float, errors: tuple[int, ...] = (),
             writable: tuple[int, ...] = ()) -> tuple[bool, set[int]]:
        raise AssertionError("the simulation drives peers by events, not by waiting")

    def next_wakeup(self, now: float) -> float | None:
        return None

    def maintain(self, now: float) -> None:
        from jobqueue.connection import Reconnect

        if self.broken and not self.inbox:
            raise Reconnect()

    def send(self, data: bytes) -> bool:
        if self.closed or self.broken:
            return True  # written into a dead socket: lost
        if self.identity is None:
            if len(self.pending) >= 10_000:
                return False
            self.pending.append(bytes(data))
            return True
        identity, frame = self.identity, bytes(data)
        self._out_clock = max(self._out_clock, self.sim.now + self.sim.latency())

        def arrive() -> None:
            if self.link.frozen:
                self.link.held.append(arrive)
            elif not self.broken and self.identity == identity:
                self.server.deliver(identity, frame)
        self.sim.at(self._out_clock, arrive)
        return True

    def from_server(self, frame: bytes) -> None:
        identity = self.identity
        self._in_clock = max(self._in_clock, self.sim.now + self.sim.latency())

        def arrive() -> None:
            if self.link.frozen:
                self.link.held.append(arrive)
            elif not self.broken and not self.closed and self.identity == identity:
                self.inbox.append(frame)
                self.on_ready()
        self.sim.at(self._in_clock, arrive)

    def receive(self, now: float) -> list[bytes | bytearray]:
        from jobqueue.connection import Reconnect

        frames: list[bytes | bytearray] = list(self.inbox)
        self.inbox.clear()
        if not frames and self.broken:
            raise Reconnect()
        return frames

    def close(self, wait: float) -> None:
        self.closed = True
        if self.identity is not None:
            self.server.disconnected(self.identity)
        self.identity = None
