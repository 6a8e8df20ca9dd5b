"""When to start workers (``jobqueue-server --spawn``), as a pure state machine.

The server gives :meth:`Autoscaler.step` the time, how many jobs wait per tag
set, and the connected workers; it answers with the spawn ids to launch now.
A launched spawn is *pending* until a worker carrying its id connects
(:meth:`Autoscaler.arrived`), its command fails (:meth:`Autoscaler.exited`
with a non-zero status) or its deadline passes; the last two are failures,
after which spawning backs off (doubling) and probes with one spawn at a time
until a spawned worker appears again.  No processes, no clock: the server
runs the commands.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Environment variables the spawn command gets.
from .config import ENV_SERVER as ENV_SERVER
from .config import ENV_SPAWN_ID as ENV_SPAWN_ID
from .config import ENV_SPAWN_RESOURCES as ENV_SPAWN_RESOURCES
from .config import ENV_SPAWN_TAGS as ENV_SPAWN_TAGS
from .events import Event, SpawnArrived, SpawnFailed
from .resources import CPUS, DEFAULT_REQUEST, Pool, Request, describe


@dataclass(frozen=True)
class SpawnPolicy:
    command: str
    max_workers: int = 4
    tags: frozenset[str] = frozenset()
    #: A spawned worker that has not connected after this long counts as failed.
    timeout: float = 300.0
    backoff_first: float = 2.0
    backoff_max: float = 300.0
    #: What a spawned worker has (--spawn-resources); none declared: jobs that ask for more
    #: than one CPU do not make it spawn.
    resources: tuple[Pool, ...] = ()

    def fits(self, request: Request) -> bool:
        """Whether a spawned worker could run a job asking for ``request``."""
        if not self.resources:
            return request == DEFAULT_REQUEST
        total = {pool.name: pool.total for pool in self.resources}
        total.setdefault(CPUS, 1)
        return all(total.get(name, 0) >= amount for name, amount in request)


@dataclass(frozen=True)
class WorkerView:
    """What the autoscaler needs to know of a connected worker."""

    tags: frozenset[str]
    free: int
    draining: bool = False
    spawn_id: str = ""


@dataclass
class Spawn:
    spawn_id: str
    started: float
    deadline: float


@dataclass
class Autoscaler:
    policy: SpawnPolicy
    id_prefix: str = "spawn"
    pending: dict[str, Spawn] = field(default_factory=dict)
    #: Consecutive failures; > 0 means probing with one spawn at a time.
    failures: int = 0
    backoff_until: float = 0.0
    #: Spawns the last step had room for (0: at --spawn-max).
    last_room: int = 1
    #: What happened, for the log; the caller empties it.
    events: list[Event] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- inputs ------------------------------------------------------------------------

    def step(self, now: float, waiting: Mapping[frozenset[str], int], workers: Iterable[WorkerView]) -> list[str]:
        """Expire late spawns, then return the ids of the spawns to launch now."""
        workers = list(workers)
        self._expire(now)
        self.last_room = self.room(workers)
        wanted = min(self.uncovered(waiting, workers), self.last_room)
        if wanted <= 0 or now < self.backoff_until:
            return []
        if self.failures:
            wanted = 1 if not self.pending else 0
        return [self._launch(now) for _ in range(wanted)]

    def arrived(self, spawn_id: str, now: float) -> None:
        """A worker carrying ``spawn_id`` connected."""
        spawn = self.pending.pop(spawn_id, None)
        if spawn is None:
            return
        self.events.append(SpawnArrived(spawn_id, round(now - spawn.started, 3)))
        self.failures = 0
        self.backoff_until = 0.0

    def exited(self, spawn_id: str, status: int, now: float) -> None:
        """The spawn command ended; a failure if it failed before its worker came."""
        if status != 0 and spawn_id in self.pending:
            del self.pending[spawn_id]
            self._failed(now, spawn_id, f"the command exited with status {status} before a worker "
                                        "connected; see its output in the server's log")

    # --- what the server asks ---------------------------------------------------------

    def uncovered(self, waiting: Mapping[frozenset[str], int], workers: Iterable[WorkerView]) -> int:
        """Waiting jobs a spawn could serve that neither a free slot nor a
        pending spawn (counted as one slot) will take."""
        able = [w for w in workers if w.free > 0 and not w.draining]
        free = [w.free for w in able]
        left = 0
        for tags, count in waiting.items():
            if not tags <= self.policy.tags:
                continue
            for i, worker in enumerate(able):
                if count > 0 and free[i] > 0 and tags <= worker.tags:
                    taken = min(count, free[i])
                    free[i] -= taken
                    count -= taken
            left += count
        return max(0, left - len(self.pending))

    def room(self, workers: Iterable[WorkerView]) -> int:
        """Spawns allowed before starting plus connected spawned workers reach the maximum."""
        connected = sum(1 for w in workers if w.spawn_id)
        return self.policy.max_workers - connected - len(self.pending)

    def next_deadline(self) -> float | None:
        """When :meth:`step` next has a timer to act on (None: none)."""
        times = [s.deadline for s in self.pending.values()]
        if self.backoff_until:
            times.append(self.backoff_until)
        return min(times) if times else None

    def why_waiting(self, tags: Iterable[str], now: float, request: Request = DEFAULT_REQUEST) -> str:
        """Why autoscaling has not (yet) served a job with these tags and request."""
        tags = frozenset(tags)
        if not tags <= self.policy.tags:
            extra = ",".join(sorted(tags - self.policy.tags))
            return f"not autoscaled: tag {extra} is not in --spawn-tags"
        if not self.policy.fits(request):
            return f"not autoscaled: it needs {describe(request)}, more than --spawn-resources gives"
        if now < self.backoff_until:
            return (f"spawned workers failed to connect {self.failures} time(s); "
                    f"next spawn in {self.backoff_until - now:.0f}s")
        if self.pending:
            oldest = min(s.started for s in self.pending.values())
            return f"{len(self.pending)} spawned worker(s) starting, the oldest for {now - oldest:.0f}s"
        if self.last_room <= 0:
            return f"autoscaling is at its limit (--spawn-max {self.policy.max_workers})"
        return "a worker is about to be spawned"

    def starting(self, now: float) -> list[tuple[str, float]]:
        """Pending spawns: (spawn id, seconds since launched)."""
        return [(s.spawn_id, round(now - s.started, 3)) for s in self.pending.values()]

    # --- internals ------------------------------------------------------------------------

    def _launch(self, now: float) -> str:
        spawn_id = f"{self.id_prefix}-{next(self._seq)}"
        self.pending[spawn_id] = Spawn(spawn_id, now, now + self.policy.timeout)
        return spawn_id

    def _expire(self, now: float) -> None:
        for spawn in [s for s in self.pending.values() if s.deadline <= now]:
            del self.pending[spawn.spawn_id]
            self._failed(now, spawn.spawn_id, f"no worker connected within {self.policy.timeout:g}s (--spawn-timeout)")

    def _failed(self, now: float, spawn_id: str, why: str) -> None:
        self.failures += 1
        delay = min(self.policy.backoff_max, self.policy.backoff_first * 2 ** (self.failures - 1))
        self.backoff_until = now + delay
        self.events.append(SpawnFailed(spawn_id, why, round(delay, 3)))
