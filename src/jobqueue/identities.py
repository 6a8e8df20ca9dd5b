"""Who is behind each routing id of the server's ROUTER socket, and their connections.

* With CURVE keys: the key libzmq's ZAP handler accepted (its User-Id, on every
  message), hence its role and its name in the key files.  A routing id keeps the
  key it first spoke with; a key removed on SIGHUP is refused from then on.
* On ``ipc://`` without keys: the connecting Unix user.  libzmq (built with
  ``SO_PEERCRED``, as on Linux) appends ``:UID:GID:PID`` to the ``Peer-Address``
  property of every message of an ipc connection; the uid is read once per
  routing id.  (``ZMQ_IPC_FILTER_UID`` only admits or rejects uids, and a ZAP
  handler for the NULL mechanism would see the same address at the cost of a
  round trip to its thread per connection.)
* On loopback TCP without keys: one owner, :data:`~jobqueue.tenancy.LOCAL`.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Collection
from typing import Any

import zmq

from . import protocol as p
from .security import ServerKeys
from .tenancy import LOCAL, Policy

#: A routing id's role (None: no keys) and owner, or why what it sends is refused.
Who = tuple[p.Role | None, str] | str


class Identities:
    def __init__(self, keys: ServerKeys | None, endpoint: str) -> None:
        self.keys = keys
        self.ipc = endpoint.startswith("ipc://")
        #: Under CURVE, the ZAP User-Id (``ROLE KEY``) each routing id first spoke with.
        self._users: dict[bytes, str] = {}
        self._known: dict[bytes, Who] = {}
        self._uid_names: dict[int, str] = {}
        #: Under CURVE, the socket each routing id speaks over.
        self.connections = Connections()

    def policy(self, fair_share: bool) -> Policy:
        """Who may do what: from the key files with CURVE; without keys, on ipc the
        server's Unix user and root are admins, and on loopback TCP everyone is the
        one owner ``local``, an admin."""
        if self.keys is not None:
            return self.keys.access.policy
        if self.ipc:
            return Policy(admins=frozenset({self._user_name(os.getuid()), "root"}), fair_share=fair_share)
        return Policy(fair_share=fair_share)

    def who(self, identity: bytes, frame: Any) -> Who:
        """Who sent ``frame`` (the last frame of a message from ``identity``)."""
        if self.keys is not None:
            user = str(frame.get("User-Id"))
            if self._users.setdefault(identity, user) != user:
                return "this routing id belongs to another key"
        try:
            return self._known[identity]
        except KeyError:
            who = self._known[identity] = self._find(identity, frame)
            return who

    def _find(self, identity: bytes, frame: Any) -> Who:
        if self.keys is not None:
            self.connections.remember(identity, frame)
            role, _, key = str(frame.get("User-Id")).partition(" ")
            if self.keys.access.roles.get(key.encode()) != role:
                return "this key was revoked: the server no longer lists it"
            return ("worker" if role == "worker" else "client"), self.keys.access.names[key.encode()]
        if self.ipc:
            try:
                uid = int(str(frame.get("Peer-Address")).rsplit(":", 3)[1])
            except (zmq.ZMQError, IndexError, ValueError):
                return None, LOCAL
            return None, self._user_name(uid)
        return None, LOCAL

    def reload(self, keys: ServerKeys) -> list[tuple[bytes, str, str]]:
        """New key files: the routing ids whose key is gone or changed role, with the
        key's old name and why it is refused."""
        old, self.keys = self.keys, keys
        self._known.clear()
        revoked = []
        for identity, user in self._users.items():
            role, _, key = user.partition(" ")
            if keys.access.roles.get(key.encode()) != role:
                name = old.access.names.get(key.encode(), key[:8]) if old else key[:8]
                revoked.append((identity, name, f"the key of {name} was revoked: "
                                                f"the server no longer lists it in --{role}s"))
        return revoked

    def forget(self, known: Collection[bytes]) -> None:
        """Keep only routing ids in ``known`` (when the tables have grown)."""
        if len(self._known) > 2 * len(known) + 1000 or len(self._users) > 2 * len(known) + 1000:
            self._users = {i: u for i, u in self._users.items() if i in known}
            self._known = {i: w for i, w in self._known.items() if i in known}
            self.connections.keep(known)

    def _user_name(self, uid: int) -> str:
        name = self._uid_names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = f"uid{uid}"
            self._uid_names[uid] = name
        return name


#: A revoked peer's connection is closed this many heartbeats after its refusal was sent.
CLOSE_AFTER = 2


class Connections:
    """The socket behind each routing id, so that the connection of a revoked key can be
    closed (ZeroMQ has no call to drop one peer of a ROUTER).  libzmq tells the file
    descriptor a message came over (``ZMQ_SRCFD``); a descriptor number may be reused by
    a later connection, so each is kept with its peer (address, or credentials on ipc)
    and shut down only if the peer is still the same.  ``shutdown`` on it makes libzmq
    see the connection end and drop it as if the peer had closed it."""

    def __init__(self) -> None:
        self._sockets: dict[bytes, tuple[int, object]] = {}
        self._closing: dict[bytes, float] = {}

    def remember(self, identity: bytes, frame: Any) -> None:
        try:
            fd = int(frame.get(zmq.SRCFD))
            self._sockets[identity] = (fd, _peer_of(fd))
        except (zmq.ZMQError, OSError, ValueError, TypeError):
            pass  # a libzmq without SRCFD: refusals alone then stop the peer

    def close_later(self, identity: bytes, when: float) -> None:
        self._closing[identity] = when

    def close_due(self, now: float) -> None:
        for identity, when in list(self._closing.items()):
            if when <= now:
                del self._closing[identity]
                self._close(identity)

    def keep(self, identities: Collection[bytes]) -> None:
        self._sockets = {i: s for i, s in self._sockets.items() if i in identities or i in self._closing}

    def _close(self, identity: bytes) -> None:
        entry = self._sockets.pop(identity, None)
        if entry is None:
            return
        fd, peer = entry
        try:
            if _peer_of(fd) == peer:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # gone already: the peer closed it


def _peer_of(fd: int) -> object:
    """What tells the connection on ``fd`` from a later one given the same number."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family == socket.AF_UNIX:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        return sock.getpeername()
