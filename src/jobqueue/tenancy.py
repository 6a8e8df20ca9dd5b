"""Who owns which job, and what each owner may do: one server shared by several teams.

Pure policy (no sockets, files or clock), consulted by the broker through a few
narrow calls:

* visibility and control: :meth:`Tenancy.may_see`, :meth:`Tenancy.may_cancel`,
  :meth:`Tenancy.may_drain` (an owner sees and cancels its own jobs; an admin
  everything; draining a worker takes an admin);
* admission of a submission: :meth:`Tenancy.admit` (the key's ``tags=``,
  ``max-queued=``, ``max-priority=``) and of a worker's hello:
  :meth:`Tenancy.worker_refusal` (the worker key's ``tags=``);
* scheduling: :meth:`Tenancy.may_start` (``max-running=``),
  :meth:`Tenancy.queue_part` (which owners need a queue of their own) and
  :attr:`Tenancy.running` (the fair-share order: fewest running jobs first).

An *owner* is a name: the comment of a CURVE key in ``--clients`` (or its
``.pub`` file's name), the Unix user of an ``ipc://`` peer without keys, or
:data:`LOCAL` for everyone on loopback TCP without keys.  The broker tells the
policy every move of a job between the waiting and running states
(:meth:`Tenancy.moved`), so the counts behind the quotas stay O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .jobstate import WAITING, JobState

#: The one owner of every job when there are neither keys nor Unix users to tell peers apart.
LOCAL = "local"
#: The owner of a job known only from its worker after a server restart (its client not back yet).
UNKNOWN = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """A client key's options (None: no limit)."""

    #: The only tags its jobs may ask for.
    tags: frozenset[str] | None = None
    max_running: int | None = None
    max_queued: int | None = None
    max_priority: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Policy:
    """What the server's options and key files say (replaced as a whole on SIGHUP)."""

    #: Owner name -> its limits (owners not listed have none).
    clients: dict[str, Limits] = field(default_factory=dict)
    #: Worker key name -> the tags it may advertise (None or absent: any).
    workers: dict[str, frozenset[str] | None] = field(default_factory=dict)
    #: Owner names with the admin role; None: every owner is an admin (one owner, no keys).
    admins: frozenset[str] | None = None
    #: --fair-share: within a priority, the owner with the fewest running jobs goes first.
    fair_share: bool = False


class Tenancy:
    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        #: Jobs per owner in the running state / waiting in the queue.
        self.running: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self._parted: frozenset[str] = frozenset()
        self.configure(self.policy)

    def configure(self, policy: Policy) -> None:
        """Take a new policy (the counts stay: they describe the jobs, not the policy)."""
        self.policy = policy
        self.fair_share = policy.fair_share
        self._parted = frozenset(name for name, limits in policy.clients.items() if limits.max_running is not None)

    def recount(self, jobs: list[tuple[str, JobState | None]]) -> None:
        """Rebuild the counts from (owner, state) of every job."""
        self.running.clear()
        self.queued.clear()
        for owner, state in jobs:
            self.moved(owner, None, state)

    # --- who may do what ------------------------------------------------------------------

    def is_admin(self, owner: str) -> bool:
        return self.policy.admins is None or owner in self.policy.admins

    def may_see(self, viewer: str, owner: str) -> bool:
        """Whether ``viewer`` may see a job of ``owner`` in full (command line, directory, tags)."""
        return viewer == owner or self.is_admin(viewer)

    may_cancel = may_see

    def may_drain(self, viewer: str) -> bool:
        return self.is_admin(viewer)

    def limits(self, owner: str) -> Limits:
        return self.policy.clients.get(owner, NO_LIMITS)

    def admit(self, owner: str, tags: list[str], priority: int) -> str:
        """Why a new job of ``owner`` is refused ('' if it is admitted)."""
        limits = self.limits(owner)
        if limits is NO_LIMITS:
            return ""
        if limits.tags is not None:
            forbidden = sorted(set(tags) - limits.tags)
            if forbidden:
                allowed = ",".join(sorted(limits.tags)) or "none"
                return (f"tag {','.join(forbidden)} is not allowed for {owner}'s key "
                        f"(its tags= option allows: {allowed})")
        if limits.max_priority is not None and priority > limits.max_priority:
            return f"priority {priority} is above {owner}'s max-priority={limits.max_priority}"
        if limits.max_queued is not None and self.queued.get(owner, 0) >= limits.max_queued:
            return f"queue quota of {limits.max_queued} jobs reached ({owner}'s max-queued)"
        return ""

    def worker_refusal(self, worker: str, tags: list[str]) -> str:
        """Why a worker of key name ``worker`` may not advertise ``tags`` ('' if it may)."""
        allowed = self.policy.workers.get(worker)
        if allowed is None:
            return ""
        forbidden = sorted(set(tags) - allowed)
        if not forbidden:
            return ""
        return (f"this worker's key ({worker}) may not advertise tag {','.join(forbidden)}; "
                f"its tags= option allows: {','.join(sorted(allowed)) or 'none'}")

    # --- scheduling -------------------------------------------------------------------------

    def queue_part(self, owner: str) -> str:
        """The owner whose own queue a job of ``owner`` goes to ('' : the shared one).

        Only owners the scheduler must tell apart get their own queue (all under
        fair share, those with max-running otherwise), so without either the
        queue is what it always was."""
        return owner if self.fair_share or owner in self._parted else ""

    def may_start(self, owner: str) -> bool:
        """Whether a job of ``owner`` may start now (its max-running)."""
        limit = self.limits(owner).max_running
        return limit is None or self.running.get(owner, 0) < limit

    def why_held(self, owner: str) -> str:
        """Why ``owner``'s waiting jobs wait regardless of free workers ('' if they need not)."""
        if self.may_start(owner):
            return ""
        limit = self.limits(owner).max_running
        return f"{owner} has {limit} job(s) running, its max-running"

    def moved(self, owner: str, old: JobState | None, new: JobState | None) -> None:
        """A job of ``owner`` went from ``old`` to ``new``: keep the counts.
        (Identity tests, not ``in WAITING``: an enum's hash costs on the broker's hot path.)"""
        if old is _RUNNING:
            self.running[owner] -= 1
        elif old is _QUEUED or old is _REQUEUED:
            self.queued[owner] -= 1
        if new is _RUNNING:
            self.running[owner] = self.running.get(owner, 0) + 1
        elif new is _QUEUED or new is _REQUEUED:
            self.queued[owner] = self.queued.get(owner, 0) + 1


_RUNNING, _QUEUED, _REQUEUED = JobState.RUNNING, JobState.QUEUED, JobState.REQUEUED
assert frozenset({_QUEUED, _REQUEUED}) == WAITING
