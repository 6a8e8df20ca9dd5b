"""``jobqueue dashboard``: a live web dashboard, a client of the server.

It connects as a client (the same ``-s``, ``--key``, ``--server-key`` and environment
variables as jq), subscribes to the server's pushed changes, and serves the pages
with uvicorn.  Never imported by jq."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import stat
import sys

from .. import __version__, config

DEFAULT_LISTEN = "127.0.0.1:8321"
PROG = "jobqueue dashboard"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Serve a live web dashboard of a jobqueue server.")
    ap.add_argument("-s", "--server", default=None,
                    help="server address (default $JOBQUEUE_SERVER, else localhost:3821)")
    ap.add_argument("--key", default=None, help="our secret key file (CURVE, a client key); $JOBQUEUE_KEY")
    ap.add_argument("--server-key", default=None, help="the server's public key file; $JOBQUEUE_SERVER_KEY")
    ap.add_argument("--connect-timeout", type=config.duration, default=config.CONNECT_TIMEOUT,
                    help="how long to wait for the server at start (default 10s)")
    ap.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                    help=f"where to serve the pages (default {DEFAULT_LISTEN}); a non-loopback address "
                         "needs --token-file")
    ap.add_argument("--token-file", default=None, metavar="FILE",
                    help="require this token (created, mode 0600, if FILE does not exist): the printed URL "
                         "carries it for the first visit, a cookie afterwards")
    ap.add_argument("--actions", action="store_true",
                    help="allow cancelling jobs and draining workers from the page (needs --token-file)")
    ap.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("-V", "--version", action="version", version=f"%(prog)s (jobqueue) {__version__}")
    return ap


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (every interface) or ``PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise config.UsageError(f"bad --listen address {text!r}: expected HOST:PORT (e.g. {DEFAULT_LISTEN})")
    if not sep:
        host = "127.0.0.1"
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in ``path``; a new random one written there (mode 0600) if it does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise config.UsageError(f"the token file {path} is readable by others (mode {mode:04o}): "
                                    f"run 'chmod 600 {path}'") from None
        with open(path) as f:
            token = f.read().strip()
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    if len(token) < 16:
        raise config.UsageError(f"the token in {path} is too short (at least 16 characters)")
    return token


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        return _serve(args)
    except config.UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 255
    except OSError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 255


def _serve(args: argparse.Namespace) -> int:
    host, port = listen_address(args.listen)
    loopback = is_loopback(host)
    if not loopback and not args.token_file:
        raise config.UsageError(f"refusing to serve the dashboard on {host}:{port} without --token-file: anyone "
                                "who can reach it would see every job's command line and output. Give "
                                "--token-file FILE, or listen on a loopback address")
    if args.actions and not args.token_file:
        raise config.UsageError("--actions needs --token-file: cancelling jobs and draining workers is done "
                                "with the dashboard's key, so only holders of the token may do it")
    token = read_token(args.token_file) if args.token_file else None
    from ..security import client_security

    endpoint = config.endpoint(config.server_address(args.server))
    security = client_security(args.key, args.server_key)
    sock = _bind(host, port)

    import uvicorn

    from .link import Link
    from .mirror import Mirror
    from .web import Notifier, build_app

    mirror = Mirror()
    notifier = Notifier()
    link = Link(endpoint, security, mirror, args.connect_timeout, notifier.notify, parent_pid=args.parent_pid)
    link.start()
    problem = link.ready.result()
    if problem is not None:
        raise config.UsageError(problem)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = socket.gethostname() if not loopback and host in ("0.0.0.0", "::") else bound_host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{bound_port}/"
    if token and args.parent_pid:  # started by jobqueue-server: its log is no place for a secret
        login = f" (first visit: {url}?token=TOKEN, the token in {args.token_file})"
    else:
        login = f"?token={token}" if token else ""
    print(f"{PROG}: serving {url}{login} for the server at {endpoint}{' (actions on)' if args.actions else ''}",
          file=sys.stderr, flush=True)
    app = build_app(mirror, link, notifier, token=token, actions=args.actions, loopback=loopback)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                           timeout_graceful_shutdown=1))
    server.run(sockets=[sock])
    link.stop()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise config.UsageError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another --listen "
                                "address") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
