"""How a job's process starts: the attributes it takes from its caller (README "What a job sees").

jq (or the Python API) sends how its own process stands: umask, resource limits,
nice value, signals ignored and blocked, which of fds 0-2 were closed, whether
stdout and stderr were one file.  :func:`plan` turns that and the worker's own
state into what the spawn must do (pure: no system calls).  ``posix_spawn`` can
set the signal mask, reset signals to their default action and close fds; the
umask it inherits, so the worker sets its own around the spawn.  Limits, the
nice value and *ignored* signals it cannot set: :func:`helper_argv` puts the
worker's own ``prlimit``, ``nice`` and ``env --ignore-signal`` in front of the
job's command line, each setting its part and then exec'ing the next (an exec
of a small program: a third of a fork of the Python worker, and none of its
CPU).  Only where one of them is missing does the job start through fork with
:func:`child_setup`.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import protocol as p

#: The limits a job takes from its caller (the names :data:`jobqueue.caller.RLIMITS` sends).
RLIMITS = {
    "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE, "data": resource.RLIMIT_DATA,
    "stack": resource.RLIMIT_STACK, "core": resource.RLIMIT_CORE, "rss": resource.RLIMIT_RSS,
    "nproc": resource.RLIMIT_NPROC, "nofile": resource.RLIMIT_NOFILE, "memlock": resource.RLIMIT_MEMLOCK,
    "as": resource.RLIMIT_AS,
}
INFINITY = resource.RLIM_INFINITY
#: What no process can ignore, block or catch, and what the C library keeps for itself.
UNTOUCHABLE = frozenset((signal.SIGKILL, signal.SIGSTOP)) | (frozenset(range(1, signal.NSIG)) - signal.valid_signals())


@dataclass(frozen=True)
class OwnState:
    """The worker's own attributes, which a spawned process inherits."""

    umask: int
    rlimits: dict[str, tuple[int, int]]  # name -> (soft, hard); INFINITY is unlimited
    nice: int
    ignored: frozenset[int]
    privileged: bool = False  # may raise hard limits and lower the nice value (root)


@dataclass(frozen=True)
class Plan:
    """What starting one job takes beyond inheriting the worker's state."""

    umask: int | None  # set around the spawn (None: the worker's is the job's)
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard) to set in the child
    nice: int | None  # to set in the child
    sigdef: tuple[int, ...]  # the worker ignores them, the caller did not: back to default
    sigign: tuple[int, ...]  # the caller ignored them, the worker does not: ignore
    sigmask: tuple[int, ...]  # the child's blocked signals (the caller's)
    closed: tuple[int, ...]  # of fds 0, 1, 2: the job starts without them
    merge_output: bool  # one pipe for fds 1 and 2

    @property
    def needs_fork(self) -> bool:
        """posix_spawn cannot set limits, the nice value, or make a signal ignored (see
        :func:`helper_argv` for what does it without a fork)."""
        return bool(self.rlimits or self.nice is not None or self.sigign)


@dataclass(frozen=True)
class Helpers:
    """Programs of the worker's machine that set an attribute, then exec the rest of
    their command line (absolute paths; None: not there)."""

    prlimit: str | None = None  # util-linux: resource limits
    nice: str | None = None  # coreutils: a higher nice value
    env: str | None = None  # coreutils 8.31 or later (--ignore-signal): ignored signals


#: RLIMIT_* -> prlimit's option (the same names as :data:`RLIMITS`).
_PRLIMIT_OPTIONS = {res: name for name, res in RLIMITS.items()}


def helper_argv(plan: Plan, own_nice: int, helpers: Helpers, argv: list[bytes]) -> list[bytes] | None:
    """The job's command line behind the helpers that give it what posix_spawn cannot:
    ``env --ignore-signal=2,3 --``, ``nice -n N --``, ``prlimit --nofile=S:H --``, each
    only if needed and in that order (the limits last, so that they bind the job and no
    helper; the job's program is then found on its own PATH, as execvp does, and keeps
    its argv[0]).  None when a needed helper is missing, or when env would take the
    word after it for an assignment (a ``=`` in it) or for ``-i`` (``-``)."""
    words: list[str] = []
    if plan.sigign:
        next_is_job = plan.nice is None and not plan.rlimits
        if helpers.env is None or next_is_job and (b"=" in argv[0] or argv[0] == b"-"):
            return None  # (env would read such a job's name as a variable, or as -i)
        words += [helpers.env, "--ignore-signal=" + ",".join(map(str, plan.sigign)), "--"]
    if plan.nice is not None:
        if helpers.nice is None:
            return None
        words += [helpers.nice, "-n", str(plan.nice - own_nice), "--"]  # nice adds to the worker's value
    if plan.rlimits:
        if helpers.prlimit is None:
            return None
        words += [helpers.prlimit, *(f"--{_PRLIMIT_OPTIONS[res]}={_prlimit_value(soft)}:{_prlimit_value(hard)}"
                                     for res, soft, hard in plan.rlimits), "--"]
    return [os.fsencode(word) for word in words] + argv


def _prlimit_value(value: int) -> str:
    return "unlimited" if value == INFINITY else str(value)


def job_pipes(spec: p.JobSpec) -> tuple[bool, bool, bool]:
    """Whether the job's fds 0, 1, 2 are pipes of ours (a terminal is one stream, read
    as stdout); otherwise fd 0 is /dev/null, and a fd its caller had closed is closed
    (with ``merge_output`` fd 2 is the pipe of fd 1)."""
    if spec.tty:
        return True, True, False
    if not spec.closed_fds:  # the usual case
        return spec.stdin, True, not spec.merge_output
    closed = set(spec.closed_fds)
    return (spec.stdin and 0 not in closed, 1 not in closed,
            2 not in closed and not (spec.merge_output and 1 not in closed))


def own_state() -> OwnState:
    """Read the worker's attributes (once its signal handlers are installed)."""
    mask = os.umask(0o022)
    os.umask(mask)
    ignored = set()
    for signum in signal.valid_signals():
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                ignored.add(int(signum))
        except (ValueError, OSError):
            pass
    return OwnState(mask, {name: resource.getrlimit(res) for name, res in RLIMITS.items()},
                    os.getpriority(os.PRIO_PROCESS, 0), frozenset(ignored), os.geteuid() == 0)


def _limit(value: int) -> int:
    return INFINITY if value < 0 else value


def _min(a: int, b: int) -> int:
    """The smaller of two limits (INFINITY is the largest)."""
    if a == INFINITY:
        return b
    if b == INFINITY:
        return a
    return min(a, b)


def plan(spec: p.JobSpec, own: OwnState) -> Plan:
    """What it takes for the job to start as its caller would have started it.

    A limit above the worker's hard limit cannot be had without privilege: it is
    clamped to it, as srun does.  Lowering the nice value needs privilege too:
    without it the job keeps the worker's (and costs no fork)."""
    rlimits = []
    for name, soft, hard in spec.rlimits:
        res = RLIMITS.get(name)
        if res is None:
            continue
        own_soft, own_hard = own.rlimits[name]
        hard_ = _limit(hard) if own.privileged else _min(_limit(hard), own_hard)
        soft_ = _min(_limit(soft), hard_)
        if (soft_, hard_) != (own_soft, own_hard):
            rlimits.append((res, soft_, hard_))
    wanted = frozenset(spec.ignored_signals) - UNTOUCHABLE
    return Plan(
        umask=spec.umask if 0 <= spec.umask != own.umask else None,
        rlimits=tuple(rlimits),
        nice=spec.nice if spec.nice is not None and (spec.nice > own.nice or own.privileged and spec.nice != own.nice)
        else None,
        sigdef=tuple(sorted(own.ignored - wanted)),
        sigign=tuple(sorted(wanted - own.ignored)),
        sigmask=tuple(sorted(frozenset(spec.blocked_signals) - UNTOUCHABLE)),
        closed=tuple(sorted(set(spec.closed_fds) & {0, 1, 2})),
        merge_output=spec.merge_output and not ({1, 2} & set(spec.closed_fds)),
    )


def child_setup(plan: Plan, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """The function a forked child runs before exec (Popen's preexec_fn): what
    posix_spawn cannot do.  Each step is best effort, as srun's: a limit or nice
    value the worker may not grant stays the worker's."""

    def setup() -> None:
        for res, soft, hard in plan.rlimits:
            try:
                resource.setrlimit(res, (soft, hard))
            except (OSError, ValueError):
                pass
        if plan.nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, plan.nice)
            except OSError:
                pass
        for signums, action in ((plan.sigdef, signal.SIG_DFL), (plan.sigign, signal.SIG_IGN)):
            for signum in signums:
                try:
                    signal.signal(signum, action)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, plan.sigmask)
        for fd in plan.closed:
            try:
                os.close(fd)
            except OSError:
                pass
        if then is not None:
            then()

    return setup


_STDIN_DEVNULL = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)


def spawn_file_actions(plan: Plan, stdin: int | None, stdout: int, stderr: int) -> list[tuple[object, ...]]:
    """posix_spawn's file actions for the job's fds 0-2 (our pipe ends; ``stdin`` None:
    /dev/null), closing those the caller had closed."""
    if not plan.closed:  # the usual case, once per job
        return [(os.POSIX_SPAWN_DUP2, stdin, 0) if stdin is not None else _STDIN_DEVNULL,
                (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)]
    actions: list[tuple[object, ...]] = []
    for fd, source in ((0, stdin), (1, stdout), (2, stderr)):
        if fd in plan.closed:
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
        elif source is None:
            actions.append((os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDONLY, 0))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, source, fd))
    return actions


def shown_argv(argv: Iterable[bytes], budget: int = 1024) -> list[bytes]:
    """The start of a command line, for display (a worker's hello stays small)."""
    shown = []
    for arg in argv:
        if budget <= 0:
            shown.append(b"...")
            break
        shown.append(arg[:budget])
        budget -= len(arg) + 1
    return shown


def find_program(name: bytes, env: dict[bytes, bytes]) -> str:
    """The file that ``execvp`` would run for ``name``, searching the job's own
    PATH (from the job's directory, where relative entries and names start).
    As a str: os.fsdecode's escapes give back the exact bytes at exec."""
    import errno

    text = os.fsdecode(name)
    if "/" in text:
        return text
    candidates = [os.path.join(directory, text) for directory in os.get_exec_path(env)]  # type: ignore[arg-type]
    for path in candidates:  # one system call per directory that lacks it
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    if any(os.path.exists(path) for path in candidates):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), text)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), text)
