"""A TCP relay of the tests' own: forwards, records, and can freeze (a silent
network cut: no FIN, no RST, bytes simply stop), hold one direction only, or cut
its connections (what they held is lost)."""

from __future__ import annotations

import selectors
import socket
import threading


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.frozen = threading.Event()
        #: Hold what clients send (what the server sends still reaches them).
        self.upstream_held = threading.Event()
        self._holding = threading.Event()  # the relay's thread reads no client side any more
        self._cut = threading.Event()
        self._insides: set[socket.socket] = set()  # the clients' sides of the connections
        self.recorded = bytearray()
        self._freeze_at: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self.frozen.set()

    def freeze_after(self, size: int) -> None:
        """Freeze once ``size`` bytes in all have gone through (e.g. in the middle of a transfer)."""
        self._freeze_at = size

    def thaw(self) -> None:
        """Forward again what was held (a cut that heals)."""
        self.frozen.clear()

    def hold_upstream(self) -> None:
        """Hold every byte a client sends from now on; what the server sends still reaches it."""
        self.upstream_held.set()
        while not self._holding.is_set() and self._thread.is_alive():
            self._stop.wait(0.01)

    def cut(self) -> None:
        """Close every connection now, dropping what they held (new ones are relayed, both ways)."""
        self.upstream_held.clear()
        self._holding.clear()
        self._cut.set()
        while self._cut.is_set() and self._thread.is_alive():
            self._stop.wait(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            if self._cut.is_set():
                for sock in list(peers):
                    self._drop(sock, peers, sel)
                self._cut.clear()
            if self.frozen.is_set():  # hold every byte: the sockets stay open and silent
                self._stop.wait(0.05)
                continue
            if self.upstream_held.is_set():  # stop reading the clients' sides
                for sock in self._insides:
                    if sel.get_map().get(sock) is not None:
                        sel.unregister(sock)
                self._holding.set()
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    inside, _ = self.listener.accept()
                    try:
                        outside = socket.create_connection(self.target)
                    except OSError:
                        inside.close()
                        continue
                    peers[inside], peers[outside] = outside, inside
                    self._insides.add(inside)
                    sel.register(inside, selectors.EVENT_READ)
                    sel.register(outside, selectors.EVENT_READ)
                else:
                    self._forward(sock, peers, sel)
        for sock in list(peers):
            sock.close()
        sel.close()

    def _forward(self, sock: socket.socket, peers: dict[socket.socket, socket.socket],
                 sel: selectors.BaseSelector) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        other = peers.get(sock)
        if not data or other is None:
            for s in (sock, other):
                if s is not None:
                    self._drop(s, peers, sel)
            return
        self.recorded += data
        try:
            other.sendall(data)
        except OSError:
            pass
        if self._freeze_at is not None and len(self.recorded) >= self._freeze_at:
            self._freeze_at = None
            self.frozen.set()

    def _drop(self, sock: socket.socket, peers: dict[socket.socket, socket.socket],
              sel: selectors.BaseSelector) -> None:
        if sock in peers:
            self._insides.discard(sock)
            if sel.get_map().get(sock) is not None:
                sel.unregister(sock)
            peers.pop(sock)
            sock.close()
