"""jobqueue-server: the ZeroMQ shell around the sans-IO :class:`~jobqueue.broker.Broker`.

One ROUTER socket; every peer (worker, client, control command) connects to
it.  Each received frame goes to the broker with the time and who sent it
(:mod:`jobqueue.identities`); what the broker returns is sent.  SIGHUP reloads
the key files.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from . import __version__
from . import protocol as p
from .autoscale import ENV_SERVER, ENV_SPAWN_ID, ENV_SPAWN_RESOURCES, ENV_SPAWN_TAGS, Autoscaler, SpawnPolicy
from .broker import Broker, Job, Send
from .config import UsageError
from .events import WorkerJoined
from .identities import CLOSE_AFTER, Identities
from .logs import Logger
from .observe import Observer
from .resources import RESERVE_AFTER, normalise
from .security import ServerKeys, check_bind
from .tenancy import Tenancy
from .transports import COPY_THRESHOLD
from .waker import Waker

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
    #: How long jobs that fit may overtake one that does not, before a worker is held for it.
    reserve_after: float = RESERVE_AFTER
    ipc_mode: int = 0o700
    #: CURVE keys (None: no encryption, loopback or ipc only unless ``insecure``).
    keys: ServerKeys | None = None
    insecure: bool = False
    #: Autoscaling (--spawn); ``spawn_address`` is the address spawned workers use.
    spawn: SpawnPolicy | None = None
    spawn_address: str | None = None
    #: Serve Prometheus metrics on this HOST:PORT (None: no metrics).
    metrics: str | None = None
    #: The command of a dashboard to start alongside (--dashboard), less the server's address.
    dashboard: list[str] | None = None
    #: --fair-share (with keys, it is also in ``keys.sources``).
    fair_share: bool = False


class Server:
    def __init__(self, options: ServerOptions, context: zmq.Context | None = None) -> None:
        self.options = options
        self.log = Logger("server", options.log_format, buffered=True)
        self.context = context or zmq.Context.instance()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        #: Who is behind each routing id (key, Unix user), and their connections.
        self.identities = Identities(options.keys, options.endpoint)
        self.broker = Broker(
            time.monotonic(), server_id=self.server_id, software=__version__, heartbeat=options.heartbeat,
            liveness=options.liveness, restart_hold=options.restart_hold, wall_clock_ns=time.time_ns(),
            tenancy=Tenancy(self.identities.policy(options.fair_share)),
            reserve_after=options.reserve_after,
        )
        #: History, series, watchers and tails for dashboards (jobqueue dashboard).
        self.observer = Observer(self.broker, time.monotonic(), wall_offset=time.time() - time.monotonic())
        self.in_clear = check_bind(options.endpoint, options.keys is not None, options.insecure)
        self.authenticator = self._start_authenticator() if options.keys is not None else None
        self._reload = False
        self.socket = self._bind()
        self.metrics = _start_metrics(self.broker, options.metrics) if options.metrics else None
        self.spawner = Spawner(options.spawn, self._spawn_address(), self.log) if options.spawn else None
        if self.spawner is not None:
            self.observer.why_more = self.spawner.why_job_waits
        self._stop = False
        self.dashboard: subprocess.Popen[bytes] | None = None
        self._dashboard_key: str | None = None  # our public key in a file, for the dashboard to pin

    def _spawn_address(self) -> str:
        """Where spawned workers connect: --spawn-address, else the bound endpoint
        (a wildcard host replaced by this host's name)."""
        if self.options.spawn_address:
            return self.options.spawn_address
        bound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        for wildcard in ("//0.0.0.0:", "//[::]:", "//*:"):
            bound = bound.replace(wildcard, f"//{socket.getfqdn()}:")
        return bound

    def _start_authenticator(self) -> KeyAuthenticator:
        assert self.options.keys is not None
        auth = KeyAuthenticator(self.options.keys.roles, self.log, self.context)
        auth.start()
        auth.configure_curve_callback("jobqueue", auth)
        return auth

    def _bind(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_SIZE + 4096)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        if self.options.keys is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.options.keys.secret
            sock.curve_publickey = self.options.keys.public
            sock.zap_domain = b"jobqueue"
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
        signal.signal(signal.SIGHUP, self._on_hup)
        waker = Waker()  # a signal wakes the poll at once (pyzmq retries a poll that EINTR interrupts)
        signal.set_wakeup_fd(waker.write_fd, warn_on_full_buffer=False)
        self.log.event("listening", endpoint=self.socket.getsockopt_string(zmq.LAST_ENDPOINT),
                       server_id=self.server_id, version=__version__, heartbeat=self.options.heartbeat,
                       liveness=self.options.liveness, curve="on" if self.options.keys else "off")
        if self.in_clear:
            self.log.event("warning", why="--insecure: serving a network address without CURVE; anyone who "
                           "can reach it can run commands on every worker and read their jobs")
        if self.options.dashboard:
            self.dashboard, self._dashboard_key = _start_dashboard(
                self.options.dashboard, self.socket.getsockopt_string(zmq.LAST_ENDPOINT), self.options.keys, self.log)
        self.log.flush()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(waker.fileno(), zmq.POLLIN)
        while not self._stop:
            if self._reload:
                self._reload = False
                self._reload_keys()
            deadline = self.broker.next_deadline()
            if self.spawner is not None:
                deadline = _earliest(deadline, self.spawner.next_wakeup())
            timeout = 1000.0 if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000)
            try:
                ready = dict(poller.poll(int(min(timeout, 1000.0))))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if waker.fileno() in ready:
                waker.drain()
            if self.socket in ready:
                self._receive_batch()
            self._deliver(self.broker.tick(time.monotonic()))
            self.identities.connections.close_due(time.monotonic())
            self.log.flush()
            if self.spawner is not None:
                self.spawner.step(time.monotonic(), self.broker)
            self._forget_identities()
        if self.dashboard is not None:
            _stop_process(self.dashboard)
        if self._dashboard_key is not None:
            os.unlink(self._dashboard_key)
        self.log.event("stopped", server_id=self.server_id)
        self.log.flush()
        self.socket.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        return 0

    def _on_stop(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    def _reload_keys(self) -> None:
        """SIGHUP: read --clients, --workers and --admins again.  A file that does not
        parse leaves the previous keys in force; connections of removed keys are
        refused (the broker drops or kills their jobs, or requeues a worker's)."""
        keys = self.options.keys
        if keys is None or self.authenticator is None:
            self.log.event("keys-reloaded", why="nothing to reload: the server runs without CURVE keys")
            return
        try:
            access = keys.sources.load()
        except UsageError as e:
            self.log.event("error", why=f"reloading the keys failed, the previous keys stay in force: {e}")
            return
        old = keys.access
        self.options.keys = keys._replace(access=access)
        self.authenticator.roles = access.roles
        now = time.monotonic()
        # the refusals go out first; a peer that does not close on its own is closed after a while
        close_at = now + CLOSE_AFTER * self.options.heartbeat
        sends = self.broker.configure(access.policy, now)
        for send in sends:
            if isinstance(send.message, p.Refused):  # a worker that may no longer advertise its tags
                self.identities.connections.close_later(send.peer, close_at)
        self._deliver(sends)
        revoked: list[str] = []
        for identity, name, why in self.identities.reload(self.options.keys):
            if identity in self.broker.peers:  # else a connection that only asked for status
                revoked.append(name)
            self._deliver(self.broker.revoke(identity, why, now))
            self.identities.connections.close_later(identity, close_at)
        removed = sorted({old.names[k] for k in old.roles if k not in access.roles})
        added = sorted({access.names[k] for k in access.roles if k not in old.roles})
        self.log.event("keys-reloaded", **access.counts(), added=added, removed=removed,
                       revoked=sorted(set(revoked)))

    def _receive_batch(self) -> None:
        """Handle what arrived.  Answers wait for the end of the burst (at most
        DELIVER_EVERY messages), so that several for one peer leave as one ZeroMQ
        message; relayed stream traffic (chunks and their acknowledgements, sent
        as the frames that came) goes at once: holding it stalls the streams."""
        sends: list[Send] = []
        try:
            for count in range(1, BATCH + 1):
                try:
                    frames, role, owner = self._recv()
                except zmq.Again:
                    return
                now = time.monotonic()
                if not frames:
                    continue
                if len(frames) != 2:
                    self.log.event("rejected", peer=frames[0].hex(), why=f"{len(frames) - 1} frames, expected 1")
                    sends.append(Send(frames[0], p.Error("one frame per message, please")))
                else:
                    answers = self.broker.receive(frames[0], frames[1], now, role, owner)
                    sends += answers
                    for send in answers:
                        if not isinstance(send.message, p.Message):
                            count = 0  # a relayed frame: deliver now
                            break
                if count % DELIVER_EVERY == 0:
                    self._deliver(sends)
                    sends = []
        finally:
            self._deliver(sends)

    def _recv(self) -> tuple[list[Any], p.Role | None, str]:
        """A message (routing id as bytes, then the frames' buffers, not copied: a job's
        stream data is relayed as received), the role of the key that sent it
        (None: CURVE off) and its owner; no frames: refused."""
        # Part by part, each frame saying whether more follow: recv_multipart asks the
        # socket (getsockopt RCVMORE, an enum lookup in pyzmq) after each part, 3 us a message.
        recv = self.socket.recv
        parts = [recv(_NOWAIT, copy=False)]
        while parts[-1].more:
            parts.append(recv(_NOWAIT, copy=False))
        frames: list[Any] = [part.buffer for part in parts]
        frames[0] = parts[0].bytes
        who = self.identities.who(frames[0], parts[-1])
        if isinstance(who, str):  # another key's routing id, or a key revoked since (SIGHUP)
            self.log.event("rejected", peer=frames[0].hex(), why=who)
            self._deliver([Send(frames[0], p.Refused(who))])
            return [], None, ""
        return frames, who[0], who[1]

    def _forget_identities(self) -> None:
        """Forget routing ids the broker no longer knows (keeps the tables small)."""
        self.identities.forget(self.broker.peers)

    def _send_frames(self, peer: bytes, frames: list[Any]) -> None:
        """One ZeroMQ message to ``peer``, one protocol message per frame (the ROUTER
        wakes its I/O thread once).  Big frames (relayed stream chunks) go without a
        copy; small ones are cheaper copied.  Raises Again or EHOSTUNREACH at once."""
        self.socket.send(peer, _SEND_MORE)
        last = len(frames) - 1
        for i, data in enumerate(frames):
            self.socket.send(data, _SEND_MORE if i < last else _SEND, copy=len(data) < COPY_THRESHOLD)

    def _deliver(self, sends: list[Send]) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.broker.events, time.monotonic())
        self.observer.observe(self.broker.events, time.monotonic())
        spawner = self.spawner
        for event in self.broker.events:
            self.log.record(event)
            if spawner is not None and isinstance(event, WorkerJoined) and event.spawn:
                spawner.arrived(event.spawn, time.monotonic())
        self.broker.events.clear()
        # What the log says happened is written before anybody hears of it: a script
        # that reads the log after jq exits finds the job's end there.
        self.log.flush()
        batches: dict[bytes, list[Any]] = {}  # per peer, in order: one ZeroMQ message each
        for send in sends:
            message = send.message
            if spawner is not None and isinstance(message, p.StatusReply):
                spawner.annotate(message, time.monotonic())
            batches.setdefault(send.peer, []).append(p.encode(message) if isinstance(message, p.Message) else message)
        unreachable: list[bytes] = []
        for peer, frames in batches.items():
            try:
                self._send_frames(peer, frames)
            except zmq.Again:
                self.log.event("dropped", peer=peer.hex(), why="peer's queue is full", messages=len(frames))
            except zmq.ZMQError as e:
                if e.errno != errno.EHOSTUNREACH:
                    raise
                unreachable.append(peer)
        for peer in dict.fromkeys(unreachable):  # its connection is gone: lost now, not after the silence
            self._deliver(self.broker.peer_gone(peer, time.monotonic()))


#: A round's answers go out after at most this many messages handled.
DELIVER_EVERY = 16
#: Send flags as plain ints: pyzmq's flag enums cost a few microseconds per message.
_SEND = _NOWAIT = int(zmq.NOBLOCK)
_SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


#: Least time between two autoscaling decisions.
SPAWN_STEP = 0.2


class Spawner:
    """Runs the --spawn command when the :class:`~jobqueue.autoscale.Autoscaler`
    says so: through ``sh -c``, in the background, in its own session, its
    output in the server's log (stderr); reaped as it ends."""

    def __init__(self, policy: SpawnPolicy, address: str, log: Logger) -> None:
        self.policy = policy
        self.address = address
        self.log = log
        self.autoscaler = Autoscaler(policy, id_prefix=os.urandom(3).hex())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._next_step = 0.0
        self._due = False

    def step(self, now: float, broker: Broker) -> None:
        self._reap(now)
        if now < self._next_step:
            self._due = True
            return
        self._next_step, self._due = now + SPAWN_STEP, False
        waiting = broker.waiting_tag_sets(self.policy.fits)
        for spawn_id in self.autoscaler.step(now, waiting, broker.worker_views()):
            self._run(spawn_id, now)
        self._log_events()

    def next_wakeup(self) -> float | None:
        return self._next_step if self._due else self.autoscaler.next_deadline()

    def arrived(self, spawn_id: str, now: float) -> None:
        self.autoscaler.arrived(spawn_id, now)
        self._log_events()

    def annotate(self, reply: p.StatusReply, now: float) -> None:
        """Add the starting workers, and why autoscaling has not served each waiting job."""
        reply.spawning = [p.SpawnInfo(spawn_id, seconds) for spawn_id, seconds in self.autoscaler.starting(now)]
        for job in reply.jobs:
            if job.why:
                job.why = f"{job.why}; {self.autoscaler.why_waiting(job.tags, now, normalise(job.resources))}"

    def why_job_waits(self, job: Job, now: float) -> str:
        """Why autoscaling has not served this waiting job (for the dashboard)."""
        return self.autoscaler.why_waiting(job.tags, now, job.request)

    def _run(self, spawn_id: str, now: float) -> None:
        env = dict(os.environ)
        env.update({ENV_SERVER: self.address, ENV_SPAWN_ID: spawn_id,
                    ENV_SPAWN_TAGS: ",".join(sorted(self.policy.tags)),
                    ENV_SPAWN_RESOURCES: " ".join(pool.describe() for pool in self.policy.resources)})
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", self.policy.command], env=env, stdin=subprocess.DEVNULL,
                                    stdout=sys.stderr.fileno(), start_new_session=True)
        except OSError as e:
            self.log.event("spawn-error", spawn=spawn_id, why=f"cannot run /bin/sh: {e}")
            self.autoscaler.exited(spawn_id, 127, now)
            return
        self.procs[spawn_id] = proc
        self.log.event("spawn", spawn=spawn_id, pid=proc.pid, command=self.policy.command)

    def _reap(self, now: float) -> None:
        for spawn_id, proc in list(self.procs.items()):
            status = proc.poll()
            if status is not None:
                del self.procs[spawn_id]
                self.log.event("spawn-exited", spawn=spawn_id, pid=proc.pid, status=status)
                self.autoscaler.exited(spawn_id, status, now)
        self._log_events()

    def _log_events(self) -> None:
        for event in self.autoscaler.events:
            self.log.record(event)
        self.autoscaler.events.clear()


def _start_metrics(broker: Broker, address: str) -> Any:
    from .metrics import Metrics  # imports prometheus_client: only with --metrics

    metrics = Metrics(broker)
    metrics.serve(address)
    return metrics


def _start_dashboard(command: list[str], endpoint: str, keys: ServerKeys | None,
                     log: Logger) -> tuple[subprocess.Popen[bytes], str | None]:
    """``jobqueue dashboard`` against this server, as a child process (its own GIL: watching
    never competes with the broker for the CPU of this one)."""
    endpoint = endpoint.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")
    command = [*command, "-s", endpoint]
    path = None
    if keys is not None:  # our public key, for the dashboard to pin
        import tempfile

        fd, path = tempfile.mkstemp(prefix="jobqueue-server-", suffix=".pub")
        with os.fdopen(fd, "w") as f:
            f.write(keys.public.decode() + "\n")
        command += ["--server-key", path]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    log.event("dashboard", pid=proc.pid, listen=command[command.index("--listen") + 1])
    return proc, path


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


class KeyAuthenticator(ThreadAuthenticator):
    """ZAP handler: only listed public keys get in, and the ZAP User-Id is
    ``"ROLE KEY"``, so that every message tells the role of its sender."""

    def __init__(self, roles: dict[bytes, str], log: Logger, context: zmq.Context) -> None:
        super().__init__(context)
        self.roles = roles
        self.server_log = log

    def callback(self, domain: str, key: bytes) -> bool:
        """The credentials check (pyzmq's ``configure_curve_callback`` protocol)."""
        if key in self.roles:
            return True
        # public keys are no secret, but a prefix is enough to tell them apart
        self.server_log.event("rejected", key=key[:8].decode() + "...", why="unknown CURVE key")
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        # roles may be replaced (SIGHUP) between the check and this call: a key gone
        # meanwhile gets a role no message is accepted with
        return f"{self.roles.get(key, 'revoked')} {key.decode()}"
