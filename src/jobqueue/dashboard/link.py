"""The dashboard's connection to the server: a thread running a client
:class:`~jobqueue.connection.Connection` (hello, heartbeats, reconnection, CURVE
keys, as jq's), which subscribes (Watch), follows the jobs whose pages are open
(Tail), sends the actions (cancel, drain), and applies what comes to the
:class:`~jobqueue.dashboard.mirror.Mirror`."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .. import __version__
from .. import protocol as p
from ..connection import Connection, Refused, Security, ServerLost
from .mirror import Mirror

#: Once connected, the dashboard never gives up on the server: it shows it as unreachable.
FOREVER = 10 * 365 * 86400.0
#: Seconds an action waits for the server's answer.
ACTION_TIMEOUT = 5.0


class Link(threading.Thread):
    def __init__(self, endpoint: str, security: Security | None, mirror: Mirror, connect_timeout: float,
                 notify: Callable[[], None] = lambda: None, parent_pid: int = 0) -> None:
        super().__init__(name="jobqueue-link", daemon=True)
        self.endpoint = endpoint
        self.mirror = mirror
        mirror.endpoint = endpoint
        self.notify = notify
        self.parent_pid = parent_pid
        self.session = os.urandom(8).hex()
        self.conn = Connection(endpoint, self._hello, p.decode_to_watcher, proto=p,
                               connect_timeout=connect_timeout, grace=FOREVER, security=security)
        self.conn.on_connect = self._on_connect
        #: Jobs followed, with how many pages follow each.
        self.following: dict[str, int] = {}
        self._commands: queue.SimpleQueue[tuple[Any, Future[Any] | None]] = queue.SimpleQueue()
        self._waiting_replies: list[Future[Any]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = False
        #: Set once connected (None) or failed for good (the reason).
        self.ready: Future[str | None] = Future()

    def _hello(self) -> p.ClientHello:
        return p.ClientHello(p.PROTOCOL_VERSION, self.session, "dashboard", socket.gethostname(), os.getpid(),
                             __version__)

    def _on_connect(self) -> list[Any]:
        return [p.Watch(), *(p.Tail(job_id) for job_id in self.following)]

    # --- called from other threads -----------------------------------------------------------

    def follow(self, job_id: str) -> None:
        self._command(("follow", job_id))

    def unfollow(self, job_id: str) -> None:
        self._command(("unfollow", job_id))

    def request(self, message: p.CancelRequest | p.DrainRequest) -> p.ControlReply:
        """Send a control request on our connection and wait for its answer."""
        future: Future[Any] = Future()
        self._command(message, future)
        reply: p.ControlReply = future.result(ACTION_TIMEOUT)
        return reply

    def stop(self) -> None:
        self._stop = True
        self._command(None)

    def _command(self, command: Any, future: Future[Any] | None = None) -> None:
        self._commands.put((command, future))
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the thread is awake anyway

    # --- the thread ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except (ServerLost, Refused) as e:
            self._fail(str(e))
        except Exception as e:  # shown on the page and printed: never a silent dead thread
            self._fail(f"{type(e).__name__}: {e}")
        finally:
            self.conn.close()

    def _fail(self, reason: str) -> None:
        with self.mirror.lock:
            self.mirror.connected = False
            self.mirror.problem = reason
        if not self.ready.done():
            self.ready.set_result(reason)
        self.notify()

    def _loop(self) -> None:
        conn = self.conn
        conn.open(time.monotonic())
        while not self._stop:
            ready, fds = conn.wait([self._wake_r], conn.next_wakeup(time.monotonic()))
            now = time.monotonic()
            if fds:
                os.read(self._wake_r, 4096)
            if ready:
                for message in conn.receive(now):
                    self._handle(message)
            self._run_commands()
            was = self.mirror.connected
            conn.tick(now)
            self._check_link(was)
            if self.parent_pid and os.getppid() != self.parent_pid:
                os.kill(os.getpid(), 15)  # our server is gone: so are we
                return

    def _check_link(self, was_connected: bool) -> None:
        """Note when the server went silent, or came back."""
        silent = not self.conn.welcomed
        if silent and was_connected:
            with self.mirror.lock:
                self.mirror.connected = False
                self.mirror.problem = f"no answer from the server at {self.endpoint}: reconnecting"
            self.notify()

    def _handle(self, message: Any) -> None:
        if isinstance(message, (p.WatchState, p.Changes)):
            with self.mirror.lock:
                self.mirror.apply(message)
                if isinstance(message, p.WatchState) and message.last:
                    self.mirror.problem = ""
            if isinstance(message, p.WatchState) and message.last and not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(message, p.Output):
            with self.mirror.lock:
                self.mirror.tail(message.job_id).add(message)
            self.conn.send(p.TailAck(message.job_id, message.attempt, message.fd,
                                     message.offset + len(message.data)))
        elif isinstance(message, p.JobDetail):
            with self.mirror.lock:
                buffer = self.mirror.tail(message.job_id)
                buffer.detail, buffer.ended = message, False
        elif isinstance(message, p.TailEnd):
            with self.mirror.lock:
                self.mirror.tail(message.job_id).ended = True
        elif isinstance(message, p.ControlReply):
            if self._waiting_replies:
                self._waiting_replies.pop(0).set_result(message)
        elif isinstance(message, p.Error):
            if not self.ready.done():  # it refused Watch: a server from before the dashboard
                raise Refused(f"the server at {self.endpoint} does not serve dashboards ({message.reason}): "
                              "run the same jobqueue release on both sides")
            if self._waiting_replies and not message.job_id:
                self._waiting_replies.pop(0).set_exception(RuntimeError(message.reason))
        else:
            return
        self.notify()

    def _run_commands(self) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, tuple) and command[0] == "follow":
                job_id = command[1]
                self.following[job_id] = self.following.get(job_id, 0) + 1
                if self.following[job_id] == 1:
                    self.conn.send(p.Tail(job_id))
            elif isinstance(command, tuple) and command[0] == "unfollow":
                job_id = command[1]
                left = self.following.get(job_id, 0) - 1
                if left <= 0:
                    self.following.pop(job_id, None)
                    self.conn.send(p.Tail(job_id, follow=False))
                    with self.mirror.lock:
                        self.mirror.forget_tails(set(self.following))
                else:
                    self.following[job_id] = left
            elif isinstance(command, (p.CancelRequest, p.DrainRequest)) and future is not None:
                if self.conn.send(command):
                    self._waiting_replies.append(future)
                else:
                    future.set_exception(RuntimeError("the server is not reachable right now"))
