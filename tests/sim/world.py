"""The whole system in one process: the real broker, worker cores and client job
states over the simulated network of :mod:`tests.sim.net`, with faults.

One seed decides everything (the jobs, the faults and when they strike, every
frame's delay), so a seed reproduces a run exactly.  :meth:`World.run` checks
the invariants after every event and at the end, and raises
:class:`InvariantBroken` naming the seed.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobqueue import protocol as p
from jobqueue.client import ClientJob, Session
from jobqueue.connection import Refused, ServerLost
from jobqueue.worker import actions as a
from jobqueue.worker.core import WorkerCore
from jobqueue.worker.runstate import ALIVE

from .net import Link, Sim, SimServer, SimTransport

#: Simulated seconds after the last fault by which every live client's job must have ended.
SETTLE = 120.0
#: A killed client's job may still start this long after the kill: the server learns of
#: the death only when a send to it fails or it has been silent for its liveness.
KILL_MARGIN = 7.0
#: A process's output is written in pieces of this size.
PIECE = 96 * 1024


class InvariantBroken(AssertionError):
    pass


@dataclass
class JobPlan:
    """What a job does, derived from the seed: the same on every attempt."""

    job_id: str
    stdin: bytes
    out_size: int
    err_size: int
    exit: int
    duration: float
    timeout: float | None = None
    #: Ends by this signal instead of exiting (the job kills itself).
    self_signal: int = 0

    def output(self, fd: int) -> bytes:
        size = self.out_size if fd == p.STDOUT else self.err_size
        seed = hashlib.sha256(f"{self.job_id}/{fd}".encode()).digest()
        body = (seed * (size // len(seed) + 1))[:size]
        if fd == p.STDOUT:  # proves the stdin it read: its digest, last
            body += hashlib.sha256(self.stdin).hexdigest().encode()
        return body

    def expected_status(self) -> set[int]:
        """Its exit status; with a time limit possibly 124 (it also waits for its stdin)."""
        status = 128 + self.self_signal if self.self_signal else self.exit
        return {status, 124} if self.timeout is not None else {status}


# --- processes ---------------------------------------------------------------------------------


class SimProcess:
    """A job's process on a worker: reads all of its stdin, then writes its output over its
    duration, then exits.  Pipes hold what the worker has not read yet."""

    def __init__(self, world: World, worker: SimWorker, plan: JobPlan, attempt: int, pid: int) -> None:
        self.world, self.worker, self.plan, self.attempt, self.pid = world, worker, plan, attempt, pid
        self.alive = True
        self.stdin = bytearray()
        self.stdin_closed = False  # EOF seen (or the worker closed its end)
        self.pipes: dict[int, bytearray] = {p.STDOUT: bytearray(), p.STDERR: bytearray()}
        self.pipe_open = {p.STDOUT: True, p.STDERR: True}  # the worker's read end
        self.wait_status: int | None = None
        self.started = world.sim.now
        world.note_start(self)
        if not plan.stdin:
            self.stdin_closed = True
            self._begin_output()

    def take_stdin(self, data: bytes) -> None:
        self.stdin += data

    def stdin_eof(self) -> None:
        if not self.stdin_closed:
            self.stdin_closed = True
            self._begin_output()

    def _begin_output(self) -> None:
        pieces = [(fd, chunk) for fd in (p.STDOUT, p.STDERR) for chunk in _pieces(self.plan.output(fd))]
        if self.stdin != self.plan.stdin:  # read wrong stdin: say so in the output
            pieces.append((p.STDOUT, b"WRONG STDIN"))
        steps = max(1, len(pieces))
        for n, (fd, chunk) in enumerate(pieces):
            self.world.sim.after(self.plan.duration * n / steps, lambda fd=fd, chunk=chunk: self._write(fd, chunk))
        self.world.sim.after(self.plan.duration, self._end)

    def _write(self, fd: int, chunk: bytes) -> None:
        if not self.alive:
            return
        if not self.pipe_open[fd]:  # the reader closed: SIGPIPE
            self.die(signal.SIGPIPE)
            return
        self.pipes[fd] += chunk
        self.worker.wake()

    def _end(self) -> None:
        if self.alive:
            self.exit(self.plan.self_signal if self.plan.self_signal else 0, self.plan.exit)

    def die(self, signum: int) -> None:
        self.exit(signum, 0)

    def exit(self, signum: int, code: int) -> None:
        if not self.alive:
            return
        self.alive = False
        self.wait_status = signum if signum else code << 8
        self.world.note_end(self)
        self.worker.wake()


def _pieces(data: bytes) -> list[bytes]:
    return [data[i:i + PIECE] for i in range(0, len(data), PIECE)] or []


# --- workers -------------------------------------------------------------------------------------


class SimWorker:
    """The real :class:`WorkerCore` and :class:`Connection`; a simulated shell around them."""

    def __init__(self, world: World, name: str, slots: int) -> None:
        self.world, self.name = world, name
        self.link = Link()
        self.alive = True
        self.faulted_at: float | None = None  # killed, stopped or cut off: its runs may overlap others
        now = world.sim.now
        self.core = WorkerCore(a.CoreConfig(name=name, host="sim", slots=slots, session=f"s-{name}",
                                            kill_grace=3.0), now)
        from jobqueue.connection import Connection

        self.conn = Connection("sim://server", self.core.hello, p.decode_to_worker, role="worker",
                               connect_timeout=float("inf"), grace=600.0, transport=self._transport)
        self.procs: dict[str, SimProcess] = {}
        self._pids = iter(range(1000, 10**9))
        self._scheduled: float | None = None
        self.conn.open(now)
        self.wake()

    def _transport(self, endpoint: str, max_message: int) -> SimTransport:
        return SimTransport(self.world.sim, self.world.server, self.link, self.wake)

    def wake(self) -> None:
        self._schedule(self.world.sim.now)

    def _schedule(self, when: float) -> None:
        if not self.alive or (self._scheduled is not None and self._scheduled <= when):
            return
        self._scheduled = when
        self.world.sim.at(when, self._step)

    def _step(self) -> None:
        self._scheduled = None
        if not self.alive:
            return
        now = self.world.sim.now
        try:
            for message in self.conn.receive(now):
                self._carry_out(self.core.on_message(message, now))
            self._pump(now)
            self._carry_out(self.core.tick(now))
            self.conn.tick(now)
        except (ServerLost, Refused) as e:
            self._carry_out(self.core.on_server_lost(str(e), now))
            self.kill()
            return
        if not self.alive:
            return
        wakeups = [now + self.conn.next_wakeup(now)]
        deadline = self.core.next_deadline()
        if deadline is not None:
            wakeups.append(deadline)
        self._schedule(min(wakeups))

    def _pump(self, now: float) -> None:
        """Read what the window allows; reap ended processes; EOF once drained."""
        for job_id, proc in list(self.procs.items()):
            for fd in (p.STDOUT, p.STDERR):
                while proc.pipes[fd] and self.core.may_read(job_id, fd):
                    data = bytes(proc.pipes[fd][:p.CHUNK_SIZE])
                    del proc.pipes[fd][:len(data)]
                    self._carry_out(self.core.on_output(job_id, fd, data, now))
            if proc.wait_status is not None and job_id in self.core.runs:
                if self.core.runs[job_id].state in ALIVE:
                    self._carry_out(self.core.on_exit(job_id, proc.wait_status, now))
                for fd in (p.STDOUT, p.STDERR):
                    if not proc.pipes[fd] and job_id in self.core.runs:
                        self._carry_out(self.core.on_eof(job_id, fd, now))

    def _carry_out(self, actions: list[a.Action]) -> None:
        for action in actions:
            if isinstance(action, a.Send):
                self.conn.send(action.message)
            elif isinstance(action, a.Spawn):
                self._spawn(action)
            elif isinstance(action, a.WriteStdin):
                proc = self.procs.get(action.job_id)
                data = b"".join(bytes(c) for c in action.chunks)
                if proc is None or not proc.alive:
                    self._carry_out(self.core.on_stdin_broken(action.job_id, 0, self.world.sim.now))
                else:
                    proc.take_stdin(data)
                    self._carry_out(self.core.on_stdin_accepted(action.job_id, len(data), self.world.sim.now))
            elif isinstance(action, a.ClosePipe):
                proc = self.procs.get(action.job_id)
                if proc is not None:
                    if action.fd == p.STDIN:
                        proc.stdin_eof()
                    else:
                        proc.pipe_open[action.fd] = False
            elif isinstance(action, a.SignalGroup):
                for proc in self.procs.values():
                    if proc.pid == action.pgid and proc.alive:
                        delay = self.world.sim.rng.choice((0.0, 0.01, 0.5))
                        self.world.sim.after(delay, lambda proc=proc, s=action.signum: proc.die(s))
            elif isinstance(action, a.Forget):
                proc = self.procs.pop(action.job_id, None)
                if proc is not None:
                    proc.die(signal.SIGKILL)
            elif isinstance(action, a.Exit):
                self.conn.close(wait=0.0)
                self.alive = False

    def _spawn(self, action: a.Spawn) -> None:
        now = self.world.sim.now
        plan = self.world.plans[action.job_id]
        run = self.core.runs[action.job_id]
        proc = SimProcess(self.world, self, plan, run.attempt, next(self._pids))
        self.procs[action.job_id] = proc
        self._carry_out(self.core.on_spawned(action.job_id, proc.pid, now))
        self.wake()

    # --- faults ------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL of the worker: its connection closes, its jobs die with their pipes."""
        if not self.alive:
            return
        self.alive = False
        self.faulted_at = self.world.sim.now
        self.conn.close()
        for proc in self.procs.values():
            proc.die(signal.SIGPIPE)

    def stop(self) -> None:
        """SIGTERM: the worker tells the server and stops its jobs."""
        if self.alive:
            self.faulted_at = self.world.sim.now
            self._carry_out(self.core.on_os_signal(signal.SIGTERM, self.world.sim.now))
            self.wake()


# --- clients -------------------------------------------------------------------------------------


class Recorder:
    """A client job's stdio: what it wrote, per attempt (a requeued job's output starts
    again: exactly-once per attempt), and how (and how often) it ended."""

    def __init__(self) -> None:
        self.attempts: list[tuple[int, dict[int, bytearray]]] = []
        self.ends: list[Any] = []
        self.failures: list[str] = []

    def write(self, job: ClientJob, fd: int, data: bytes, end: int) -> None:
        if not self.attempts or self.attempts[-1][0] != job.attempt:
            self.attempts.append((job.attempt, {p.STDOUT: bytearray(), p.STDERR: bytearray()}))
        self.attempts[-1][1][fd] += data
        job.written(fd, end)

    def output(self, fd: int, attempt: int = -1) -> bytes:
        """What the job wrote on ``fd`` in one attempt (default: the last)."""
        return bytes(self.attempts[attempt][1][fd]) if self.attempts else b""

    def queued(self, job: ClientJob, msg: Any) -> None: ...
    def started(self, job: ClientJob, msg: Any) -> None: ...
    def requeued(self, job: ClientJob, msg: Any) -> None: ...

    def finished(self, job: ClientJob, msg: Any) -> None:
        self.ends.append(msg)

    def failed(self, job: ClientJob, reason: str) -> None:
        self.failures.append(reason)


class SimClient:
    """A jq: one session, one job, stdin fed as the window allows; driven as jq's loop is."""

    def __init__(self, world: World, plan: JobPlan) -> None:
        self.world, self.plan = world, plan
        self.link = Link()
        self.alive = True
        self.killed_at: float | None = None
        self.io = Recorder()
        self.session = Session("sim://server", name=f"jq-{plan.job_id}", proto=p, grace=600.0,
                               connect_timeout=600.0, transport=self._transport)
        spec = p.JobSpec([plan.job_id.encode()], {}, b"/", timeout=plan.timeout, stdin=bool(plan.stdin))
        self.job = ClientJob(spec, self.io, plan.job_id, proto=p)
        self._stdin_sent = 0
        self._scheduled: float | None = None
        self.session.add(self.job)
        self.session.open(world.sim.now)
        self.wake()

    def _transport(self, endpoint: str, max_message: int) -> SimTransport:
        return SimTransport(self.world.sim, self.world.server, self.link, self.wake)

    @property
    def done(self) -> bool:
        return bool(self.io.ends)

    def wake(self) -> None:
        self._schedule(self.world.sim.now)

    def _schedule(self, when: float) -> None:
        if not self.alive or self.done or (self._scheduled is not None and self._scheduled <= when):
            return
        self._scheduled = when
        self.world.sim.at(when, self._step)

    def _step(self) -> None:
        self._scheduled = None
        if not self.alive or self.done:
            return
        now = self.world.sim.now
        try:
            self.session.receive(now)
            while self.job.running and self.job.wants_stdin() and self._stdin_sent <= len(self.plan.stdin):
                piece = self.plan.stdin[self._stdin_sent:self._stdin_sent + p.CHUNK_SIZE]
                self._stdin_sent += len(piece) or 1
                self.job.feed(piece)
            self.session.flush()
            self.session.conn.tick(now)
        except (ServerLost, Refused) as e:
            raise InvariantBroken(f"client of {self.plan.job_id} gave up: {e}") from None
        if self.done:
            self.session.close()
            return
        self._schedule(now + self.session.conn.next_wakeup(now))

    def kill(self) -> None:
        self.alive = False
        self.killed_at = self.world.sim.now
        self.session.conn.close()


# --- the world -----------------------------------------------------------------------------------


@dataclass
class World:
    seed: int
    jobs: int = 6
    workers: int = 3
    slots: int = 2
    faults: int = 6
    #: Simulated seconds over which jobs arrive and faults strike.
    span: float = 30.0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sim = Sim(self.seed)
        self.server = SimServer(self.sim)
        self.plans: dict[str, JobPlan] = {}
        self.clients: list[SimClient] = []
        self.pool: list[SimWorker] = []
        self.running: dict[str, list[SimProcess]] = {}
        self.starts: dict[str, list[float]] = {}
        self._worker_seq = 0
        self.crashes: list[float] = []

    # --- set-up ------------------------------------------------------------------------------

    def plan_job(self, n: int) -> JobPlan:
        rng = self.sim.rng
        big = rng.random() < 0.15  # more output than the window
        stdin = bytes(rng.randrange(256) for _ in range(rng.choice((0, 0, 10, 3000)))) * rng.choice((1, 1, 200))
        timeout = rng.choice((None, None, None, None, 2.0))
        return JobPlan(f"j{n}", stdin, rng.choice((0, 10, 5000, 300_000)) + (5 * p.WINDOW // 2 if big else 0),
                       rng.choice((0, 0, 20, 100_000)), rng.choice((0, 0, 1, 3, 42)),
                       rng.choice((0.0, 0.05, 0.5, 1.5, 4.0)), timeout,
                       self_signal=signal.SIGSEGV if rng.random() < 0.05 else 0)

    def add_worker(self) -> SimWorker:
        self._worker_seq += 1
        worker = SimWorker(self, f"w{self._worker_seq}", self.slots)
        self.pool.append(worker)
        return worker

    def note_start(self, proc: SimProcess) -> None:
        job_id = proc.plan.job_id
        self.starts.setdefault(job_id, []).append(self.sim.now)
        others = [other for other in self.running.get(job_id, []) if other.alive]
        for other in others:
            crashed = any(when >= other.started for when in self.crashes)
            if other.worker.faulted_at is None and not crashed:
                self.fail(f"job {job_id} starts on {proc.worker.name} while it runs on {other.worker.name}, "
                          "which was never lost")
        client = next(c for c in self.clients if c.plan.job_id == job_id)
        if client.killed_at is not None and self.sim.now > client.killed_at + KILL_MARGIN:
            self.fail(f"job {job_id} starts again {self.sim.now - client.killed_at:.1f}s after its client was killed")
        self.running.setdefault(job_id, []).append(proc)

    def note_end(self, proc: SimProcess) -> None:
        pass

    def fail(self, why: str) -> None:
        raise InvariantBroken(f"seed {self.seed} at t={self.sim.now:.3f}: {why}\n" + "\n".join(self.log[-30:]))

    # --- faults ------------------------------------------------------------------------------

    def schedule_faults(self) -> None:
        rng = self.sim.rng
        kinds: list[tuple[str, Callable[[], None]]] = [
            ("server-crash", self._server_crash), ("worker-kill", self._worker_kill),
            ("worker-stop", self._worker_stop), ("link-freeze", self._link_freeze),
            ("client-kill", self._client_kill), ("message-delay", lambda: None),
        ]
        for _ in range(self.faults):
            name, action = rng.choice(kinds)
            when = rng.uniform(0.1, self.span)
            self.sim.at(when, lambda name=name, action=action: self._strike(name, action))

    def _strike(self, name: str, action: Callable[[], None]) -> None:
        self.log.append(f"t={self.sim.now:.3f} fault {name}")
        action()

    def _server_crash(self) -> None:
        if not self.server.up:
            return
        self.server.crash()
        self.crashes.append(self.sim.now)
        self.sim.after(self.sim.rng.choice((0.0, 0.3, 2.0, 8.0)), self._server_start)

    def _server_start(self) -> None:
        if not self.server.up:
            self.server.start()

    def _alive_workers(self) -> list[SimWorker]:
        return [w for w in self.pool if w.alive and w.faulted_at is None]

    def _worker_kill(self) -> None:
        alive = self._alive_workers()
        if alive:
            self.sim.rng.choice(alive).kill()
            self.add_worker()

    def _worker_stop(self) -> None:
        alive = self._alive_workers()
        if alive:
            self.sim.rng.choice(alive).stop()
            self.add_worker()

    def _link_freeze(self) -> None:
        peers: list[Any] = [*self._alive_workers(), *(c for c in self.clients if c.alive and not c.done)]
        if not peers:
            return
        peer = self.sim.rng.choice(peers)
        if isinstance(peer, SimWorker):
            peer.faulted_at = self.sim.now  # a worker cut off may be declared lost
        peer.link.frozen = True
        self.sim.after(self.sim.rng.choice((0.5, 3.0, 12.0)), peer.link.thaw)

    def _client_kill(self) -> None:
        live = [c for c in self.clients if c.alive and not c.done]
        if live:
            self.sim.rng.choice(live).kill()

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> World:
        self.server.start()
        for _ in range(self.workers):
            self.add_worker()
        for n in range(self.jobs):
            plan = self.plan_job(n)
            self.plans[plan.job_id] = plan
            self.sim.at(self.sim.rng.uniform(0.0, self.span / 2), lambda plan=plan: self._arrive(plan))
        self.schedule_faults()
        limit = self.span + SETTLE
        while self.sim.step():
            if self.sim.now > limit:
                break
            self._check_memory()
            if self._settled():
                break
        self._check_end()
        return self

    def _settled(self) -> bool:
        """Every job has arrived and ended, and no killed client's job still runs."""
        if len(self.clients) < self.jobs or not all(c.done or not c.alive for c in self.clients):
            return False
        return not any(proc.alive for c in self.clients if not c.alive
                       for proc in self.running.get(c.plan.job_id, []))

    def _arrive(self, plan: JobPlan) -> None:
        self.clients.append(SimClient(self, plan))

    def _check_memory(self) -> None:
        for worker in self.pool:
            for run in worker.core.runs.values():
                for fd, stream in run.streams.items():
                    if stream.in_flight > p.WINDOW + p.CHUNK_SIZE:
                        self.fail(f"{worker.name} holds {stream.in_flight} unacknowledged bytes of "
                                  f"{run.job_id} fd {fd}")

    def _check_end(self) -> None:
        for client in self.clients:
            plan = client.plan
            if not client.alive:
                continue
            if not client.io.ends:
                self.fail(f"job {plan.job_id} never ended (client still waiting at t={self.sim.now:.1f})")
            if len(client.io.ends) != 1:
                self.fail(f"job {plan.job_id} ended {len(client.io.ends)} times")
            end = client.io.ends[0]
            if end.reason == "lost":
                continue  # its workers were lost too often: told so, with no output promised
            if end.status not in plan.expected_status():
                self.fail(f"job {plan.job_id} ended with {end.status} ({end.reason}), expected "
                          f"{plan.expected_status()}")
            for fd in (p.STDOUT, p.STDERR):
                expected = plan.output(fd)
                for n in range(len(client.io.attempts)):
                    got = client.io.output(fd, n)
                    final = n == len(client.io.attempts) - 1 and end.status != 124
                    want = expected if final else expected[:len(got)]  # earlier attempts (or a timeout): a prefix
                    if got != want:
                        self.fail(f"job {plan.job_id} fd {fd}, attempt {client.io.attempts[n][0]}: {len(got)} "
                                  f"bytes, expected {len(want)} (first difference at {_first_difference(got, want)})")
                if not client.io.attempts and expected and end.status != 124:
                    self.fail(f"job {plan.job_id} fd {fd}: no output, expected {len(expected)} bytes")
        for client in self.clients:
            if client.io.ends or client.alive:
                continue
            alive = [proc for proc in self.running.get(client.plan.job_id, []) if proc.alive]
            if alive:
                self.fail(f"job {client.plan.job_id} of a killed client still runs on {alive[0].worker.name}")


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
