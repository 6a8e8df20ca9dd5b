"""How the caller stands: what a job takes from it (README "What a job sees"), for jq
and the Python API: its environment, resource limits, umask, nice value, ignored and
blocked signals, closed standard fds; and whether Linux could run its command line.

jq loads this module for every job: /proc is read with plain system calls, and
nothing beyond what the interpreter has at hand is imported.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container

#: The resource limits a job takes from its caller, as srun's default
#: PropagateResourceLimits does (/proc/self/limits' names -> ours).  The others
#: (nice and real-time priority, pending signals, message queues, file locks)
#: are the worker machine's policy.
RLIMITS = {b"Max cpu time": "cpu", b"Max file size": "fsize", b"Max data size": "data",
           b"Max stack size": "stack", b"Max core file size": "core", b"Max resident set": "rss",
           b"Max processes": "nproc", b"Max open files": "nofile", b"Max locked memory": "memlock",
           b"Max address space": "as"}
#: Signals Python itself ignores at start (so jq cannot see whether its caller did):
#: a job gets them at their default action, as subprocess gives its children.
PYTHON_IGNORES = (13, 25)  # SIGPIPE, SIGXFSZ
#: Linux's limit on one argument or environment string, NUL included (MAX_ARG_STRLEN).
MAX_ARG_STRLEN = 32 * 4096
#: The most arguments and environment Linux runs, whatever the stack limit.
MAX_EXEC_BYTES = 6 << 20


def _read_proc(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def caller_environment() -> dict[bytes, bytes]:
    """This process's environment exactly as it was started with: the bytes of
    /proc/self/environ (Python adds LC_CTYPE to its own when it coerces a C
    locale, which the job must not see), else os.environb.  A name given twice
    keeps its first value, the one getenv() finds."""
    data = _read_proc("/proc/self/environ")
    if not data:
        return dict(os.environb)
    env: dict[bytes, bytes] = {}
    for entry in data.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name and name not in env:
            env[name] = value
    return env


def _status_field(status: bytes, name: bytes) -> bytes:
    """One field of /proc/PID/status (``b""`` if absent), found without splitting the file."""
    at = status.find(b"\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 2
    end = status.find(b"\n", start)
    return status[start:end if end >= 0 else len(status)].strip()


def _signals_in(mask: bytes, valid: Container[int]) -> list[int]:
    """The signals whose bits are set in a /proc status mask (only the set bits are
    visited: masks are mostly empty)."""
    bits = int(mask, 16)
    signals = []
    while bits:
        low = bits & -bits
        signum = low.bit_length()
        if signum in valid:
            signals.append(signum)
        bits ^= low
    return signals


def proc_rlimits() -> list[tuple[str, int, int]]:
    """The resource limits a job takes, from /proc/self/limits (no import)."""
    rlimits = []
    for line in _read_proc("/proc/self/limits").splitlines()[1:]:
        name = RLIMITS.get(line[:26].strip())
        if name is not None:
            soft, hard = line[26:].split()[:2]
            rlimits.append((name, -1 if soft == b"unlimited" else int(soft), -1 if hard == b"unlimited" else int(hard)))
    return rlimits


_valid_signals: frozenset[int] = frozenset()


def _signals() -> frozenset[int]:
    """The signals this system has, asked once: not the C library's own (32 and 33),
    which show as ignored."""
    global _valid_signals
    if not _valid_signals:
        import _signal  # loaded already by jq (the C core of signal)

        _valid_signals = frozenset(_signal.valid_signals())
    return _valid_signals


def caller_attributes(rlimits: list[tuple[str, int, int]] | None = None,
                      status: bytes | None = None) -> dict[str, object]:
    """How this process (this thread) stands, as JobSpec fields: umask, resource
    limits, nice value, signals ignored and blocked.  The umask and signals come
    from /proc/thread-self/status (the only race-free way to read a umask); the
    limits from /proc/self/limits.  The API, per submission, passes both read its
    own way (getrlimit, and a status file kept open per thread: cheaper, but
    needing imports and state that jq's start-up does without)."""
    valid = _signals()
    if status is None:
        status = _read_proc("/proc/thread-self/status")
    attrs: dict[str, object] = {}
    umask = _status_field(status, b"Umask")
    if umask:
        attrs["umask"] = int(umask, 8)
    ignored = _status_field(status, b"SigIgn")
    if ignored:
        attrs["ignored_signals"] = [n for n in _signals_in(ignored, valid) if n not in PYTHON_IGNORES]
    blocked = _status_field(status, b"SigBlk")
    if blocked:
        attrs["blocked_signals"] = _signals_in(blocked, valid)
    attrs["rlimits"] = proc_rlimits() if rlimits is None else rlimits
    try:
        attrs["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        pass
    return attrs


def same_file(fd1: int, fd2: int) -> bool:
    """Whether two fds are the same file (``2>&1``, one terminal): then a job's
    stdout and stderr are one pipe, so that their order is kept."""
    try:
        a, b = os.fstat(fd1), os.fstat(fd2)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def exec_problem(argv: list[bytes], env: dict[bytes, bytes]) -> str:
    """Why the kernel would refuse to run this command line here ('' if it would
    not): Linux counts every argument and variable with its NUL and pointer
    against ARG_MAX (a quarter of the stack limit; the job takes our stack
    limit), and each string against MAX_ARG_STRLEN.  (C-level sums: the API
    checks every submission, with a whole environment.)"""
    try:  # Linux caps it at 6 MiB (three quarters of 8 MiB), whatever the stack limit
        arg_max = min(os.sysconf("SC_ARG_MAX"), MAX_EXEC_BYTES)
    except (ValueError, OSError):
        arg_max = 2 << 20
    # lengths summed by joining (C-level); the longest string is looked for only when
    # all of them together are too long for one
    arg_bytes, name_bytes, value_bytes = len(b"".join(argv)), len(b"".join(env)), len(b"".join(env.values()))
    size = 8 * (len(argv) + len(env) + 2) + arg_bytes + len(argv) + name_bytes + value_bytes + 2 * len(env)
    longest = max(arg_bytes + 1, name_bytes + value_bytes + 2)
    if longest > MAX_ARG_STRLEN:
        longest = max(max(map(len, argv), default=0) + 1,
                      max(map(int.__add__, map(len, env), map(len, env.values())), default=-2) + 2)
    if size > arg_max:
        return (f"argument list too long: {size} bytes of arguments and environment, more than the "
                f"system's limit (ARG_MAX = {arg_max} bytes, a quarter of the stack size limit)")
    if longest > MAX_ARG_STRLEN:
        return (f"argument list too long: one argument or variable has {longest - 1} bytes, more than "
                f"the system's limit on one ({MAX_ARG_STRLEN - 1} bytes)")
    return ""
