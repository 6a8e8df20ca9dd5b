"""jobqueue-server: the ZeroMQ shell around the sans-IO :class:`~jobqueue.broker.Broker`.

One ROUTER socket; every peer (worker, client, control command) connects to
it.  Each received frame goes to the broker with the time; what the broker
returns is sent.  Nothing else happens here.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq

from . import __version__
from . import protocol as p
from .broker import Broker, Send
from .logs import Logger

#: Messages queued per peer before the server drops (flow control keeps
#: well-behaved peers far below this).
SEND_HWM = 100_000
#: Frames handled per poll round before timers get their turn.
BATCH = 1000


@dataclass
class ServerOptions:
    endpoint: str
    heartbeat: float = 1.0
    liveness: int = 5
    log_format: str = "text"
    restart_hold: float | None = None
    ipc_mode: int = 0o700


class Server:
    def __init__(self, options: ServerOptions, context: zmq.Context | None = None) -> None:
        self.options = options
        self.log = Logger("server", options.log_format)
        self.context = context or zmq.Context.instance()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.broker = Broker(
            time.monotonic(), server_id=self.server_id, software=__version__, heartbeat=options.heartbeat,
            liveness=options.liveness, restart_hold=options.restart_hold, wall_clock_ns=time.time_ns(),
        )
        self.socket = self._bind()
        self._stop = False

    def _bind(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_SIZE + 4096)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        endpoint = self.options.endpoint
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            old = os.umask(0o777 & ~self.options.ipc_mode)
            try:
                _remove_stale_ipc(path)
                sock.bind(endpoint)
            finally:
                os.umask(old)
        else:
            sock.bind(endpoint)
        return sock

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        self.log.event("listening", endpoint=self.socket.getsockopt_string(zmq.LAST_ENDPOINT),
                       server_id=self.server_id, version=__version__, heartbeat=self.options.heartbeat,
                       liveness=self.options.liveness)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._stop:
            deadline = self.broker.next_deadline()
            timeout = 1000.0 if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000)
            try:
                ready = poller.poll(int(min(timeout, 1000.0)))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if ready:
                self._receive_batch()
            self._deliver(self.broker.tick(time.monotonic()))
        self.log.event("stopped", server_id=self.server_id)
        self.socket.close(linger=0)
        return 0

    def _on_stop(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _receive_batch(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            if len(frames) != 2:
                self.log.event("rejected", peer=frames[0].hex(), why=f"{len(frames) - 1} frames, expected 1")
                self._deliver([Send(frames[0], p.Error("one frame per message, please"))])
                continue
            self._deliver(self.broker.receive(frames[0], frames[1], now))

    def _deliver(self, sends: list[Send]) -> None:
        for kind, fields in self.broker.events:
            self.log.event(kind, **fields)
        self.broker.events.clear()
        for send in sends:
            data = send.message if isinstance(send.message, bytes) else p.encode(send.message)
            try:
                self.socket.send_multipart([send.peer, data], zmq.NOBLOCK)
            except zmq.Again:
                self.log.event("dropped", peer=send.peer.hex(), why="peer's queue is full")
            except zmq.ZMQError as e:
                if e.errno != errno.EHOSTUNREACH:
                    raise
                # the peer is gone; its liveness timer will notice


def _remove_stale_ipc(path: str) -> None:
    """Remove an ipc socket file left by a dead server (but not a live one's)."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        probe.close()
        print(f"jobqueue-server: another server is listening on {path}", file=sys.stderr)
