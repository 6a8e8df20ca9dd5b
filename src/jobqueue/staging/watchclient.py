"""jq's side of the stage watcher (:mod:`.watchd`): ask it what changed, start it.

One watcher per staged root and user, found by an abstract Unix socket name
made of the user and the root.  Anyone on the machine could bind such a name
first, so jq believes only a watcher of its own user (``SO_PEERCRED``) that
names the same root; anything else is "no watcher" and jq lists the tree as
before.  Asking costs well under a millisecond; everything here is loaded by
jq, so it imports only C modules the interpreter has at hand.

``$JOBQUEUE_STAGE_WATCH``: unset, a watcher is started for a tree of at least
:data:`MIN_FILES` files; ``0`` (or ``off``), never; ``always``, for any tree.
``$JOBQUEUE_STAGE_WATCH_IDLE``: seconds a watcher lives without a question
(default 600).
"""

from __future__ import annotations

import os

ENV_WATCH = "JOBQUEUE_STAGE_WATCH"
ENV_IDLE = "JOBQUEUE_STAGE_WATCH_IDLE"
#: A tree listed faster than a watcher could answer is not worth a process.
MIN_FILES = 1000
_TIMEOUT = 0.5  # seconds: a watcher busy longer (watching a huge tree still) is not waited for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .journal import Token


def mode() -> str:
    """"off", "always" or "large" (the default: trees of at least MIN_FILES files)."""
    value = os.environ.get(ENV_WATCH, "").strip().lower()
    if value in ("0", "off", "no", "false", "never"):
        return "off"
    return "always" if value in ("always", "1", "on", "yes", "true") else "large"


def socket_name(root: bytes) -> bytes:
    """The abstract socket name of ``root``'s watcher for this user."""
    import binascii

    return b"\0jobqueue-stage-watch/%d/%08x-%d" % (os.getuid(), binascii.crc32(root), len(root))


#: What :func:`_exchange` returns when something listens under the name but gives no
#: answer to be believed (busy, someone else's, broken): do not start another.
_NO_ANSWER = (b"", 0, None, None)


def _exchange(root: bytes, request: tuple) -> tuple | None:
    """Send ``request`` to ``root``'s watcher and return its answer; None when nothing
    listens under its name, _NO_ANSWER when what listens gives no answer to believe."""
    import _socket
    import marshal

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(_TIMEOUT)
        try:
            sock.connect(socket_name(root))
        except OSError:
            return None
        try:
            pid, uid, _gid = memoryview(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)).cast("i")
            if uid != os.getuid():
                return _NO_ANSWER  # someone else's socket under our name: not to be believed
            sock.sendall(marshal.dumps(request))
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while data := sock.recv(1 << 16):
                chunks.append(data)
            answer = marshal.loads(b"".join(chunks))
        except (OSError, EOFError, ValueError, TypeError):
            return _NO_ANSWER  # (busy watching a huge tree still, say)
    finally:
        sock.close()
    if type(answer) is not tuple or len(answer) != 4 or answer[0] != root or answer[1] != pid:
        return _NO_ANSWER
    return answer


def ask(root: bytes, token: Token | None) -> tuple[Token | None, frozenset[bytes] | None] | None:
    """What changed under ``root`` since ``token``: (new token, the changed directories, or
    None to list everything); (None, None) when the watcher cannot tell (it cannot watch this
    tree, or gives no answer to believe); None when there is no watcher."""
    answer = _exchange(root, ("ask", root, token))
    if answer is None:
        return None
    _root, _pid, new_token, changed = answer
    if new_token is None or type(new_token) is not tuple or len(new_token) != 2 or \
            not (changed is None or type(changed) is list):
        return None, None
    return new_token, (frozenset(changed) if changed is not None else None)


def stop(root: bytes) -> int | None:
    """Ask ``root``'s watcher to end; its pid, or None when there is none."""
    answer = _exchange(root, ("stop", root, None))
    return None if answer is None or answer is _NO_ANSWER else answer[1]


def start(root: bytes) -> None:
    """Start a watcher for ``root`` in the background: its own session, no terminal, no
    output, and not our child (a shell starts it and ends at once, so the Python API's long
    process keeps no zombie); it gives up by itself when one is already there."""
    import sys

    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", '"$0" -m jobqueue.staging.watchd "$1" &',
                                         sys.executable, os.fsdecode(root)],
                             os.environ, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                                           (os.POSIX_SPAWN_DUP2, devnull, 2)])
        os.waitpid(pid, 0)
    except OSError:
        pass  # no watcher: the tree is listed as before
    finally:
        os.close(devnull)
