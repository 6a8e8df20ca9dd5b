"""CurveZMQ keys for clients, workers and the server, and the server's safe-by-default bind.

Key files are z85 text, one key per line; a line starting with ``#`` that is
not itself a key is a comment, and words after a key are ignored (like ssh's
authorized_keys).  ``jobqueue keygen PATH`` writes the secret key at ``PATH``
(mode 0600) and the public key at ``PATH.pub``.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, NamedTuple

import zmq
from zmq.utils import z85

from .config import ENV_KEY as ENV_KEY
from .config import ENV_SERVER_KEY as ENV_SERVER_KEY
from .config import UsageError
from .transports import Security

if TYPE_CHECKING:
    from .authkeys import Access

KEY_LENGTH = 40  # z85 characters of a 32-byte CURVE key
ROLES = ("client", "worker")


def client_security(key: str | None, server_key: str | None) -> Security | None:
    """Keys for a client or worker: the options win over the environment."""
    key = key or os.environ.get(ENV_KEY)
    server_key = server_key or os.environ.get(ENV_SERVER_KEY)
    if not key and not server_key:
        return None
    if not key or not server_key:
        raise UsageError("CURVE needs both --key (our secret key) and --server-key (the server's public key), "
                         f"or ${ENV_KEY} and ${ENV_SERVER_KEY}")
    public, secret = load_secret_key(key)
    return Security(public, secret, load_public_key(server_key))


# --- key files ------------------------------------------------------------------------------


def keygen(path: str) -> tuple[str, str]:
    """Write a new key pair: the secret key at ``path`` (0600), the public one at ``path.pub``."""
    secret_path, public_path = path, path + ".pub"
    for existing in (secret_path, public_path):
        if os.path.lexists(existing):
            raise UsageError(f"{existing} exists already: remove it first or choose another PATH")
    public, secret = zmq.curve_keypair()
    _write_new(secret_path, f"# jobqueue CURVE secret key: keep it private (mode 0600)\n"
                            f"{secret.decode()}\n", 0o600)
    _write_new(public_path, f"{public.decode()} {os.path.basename(secret_path)}\n", 0o644)
    return secret_path, public_path


def _write_new(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_secret_key(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file, refused if others may read it (as ssh does)."""
    if path.endswith(".pub"):
        raise UsageError(f"{path} is a public key: --key takes the secret key file (the one without .pub)")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise UsageError(f"cannot read the secret key {path}: {e.strerror}") from None
    if mode & 0o077:
        raise UsageError(f"the secret key {path} is readable by others (mode {mode:04o}): "
                         f"run 'chmod 600 {path}' and start again")
    secret = _single_key(path)
    return zmq.curve_public(secret), secret


def load_public_key(path: str) -> bytes:
    return _single_key(path)


def _single_key(path: str) -> bytes:
    keys = read_keys(path)
    if len(keys) != 1:
        raise UsageError(f"{path} holds {len(keys)} keys, expected exactly one (as written by jobqueue keygen)")
    return keys[0]


def key_file_lines(path: str) -> list[str]:
    """A key file's lines; a clear error if it cannot be read as text."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the key file {path}: {e}") from None


def read_keys(path: str) -> list[bytes]:
    """Every key (z85 bytes) in a key file; a clear error on anything else."""
    keys = []
    for number, line in enumerate(key_file_lines(path), 1):
        words = line.split()
        if words and is_key(words[0]):
            keys.append(words[0].encode())
        elif words and not line.lstrip().startswith("#"):
            raise UsageError(f"{path}:{number}: not a CURVE key (expected {KEY_LENGTH} z85 characters, "
                             "as jobqueue keygen writes; comment lines start with #)")
    return keys


def is_key(word: str) -> bool:
    if len(word) != KEY_LENGTH:
        return False
    try:
        z85.decode(word)
    except (ValueError, KeyError, UnicodeEncodeError):
        return False
    return True


# --- the server side --------------------------------------------------------------------------


class ServerKeys(NamedTuple):
    """The server's key pair, and every authorized key with its role, name and options."""

    public: bytes
    secret: bytes
    access: Access
    #: Where the authorized keys come from (--clients, --workers, --admins): read again on SIGHUP.
    sources: KeySources

    @property
    def roles(self) -> dict[bytes, str]:
        return self.access.roles


class KeySources(NamedTuple):
    clients: str
    workers: str
    admins: str | None = None
    fair_share: bool = False

    def load(self) -> Access:
        from .authkeys import load_access

        return load_access(self.clients, self.workers, self.admins, self.fair_share)


def server_keys(key: str | None, clients: str | None, workers: str | None, admins: str | None = None,
                fair_share: bool = False) -> ServerKeys | None:
    """The server's CURVE set-up from its options (None: CURVE off)."""
    if not (key or clients or workers or admins):
        return None
    if not (key and clients and workers):
        raise UsageError("CURVE needs --key, --clients and --workers together "
                         "(see jobqueue keygen and the Security section of the README)")
    public, secret = load_secret_key(key)
    sources = KeySources(clients, workers, admins, fair_share)
    return ServerKeys(public, secret, sources.load(), sources)


LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint`` (ipc, or tcp on loopback)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: may be reachable from elsewhere


def check_bind(endpoint: str, curve: bool, insecure: bool) -> bool:
    """Refuse to serve a network address in clear; True when that is allowed (--insecure)."""
    if curve or is_local_endpoint(endpoint):
        return False
    if not insecure:
        raise UsageError(f"refusing to bind {endpoint} without CURVE keys: anyone who can reach it could run "
                         "commands on every worker. Give --key, --clients and --workers (see jobqueue keygen), "
                         "bind a loopback or ipc:// address, or pass --insecure if the network is trusted")
    return True
