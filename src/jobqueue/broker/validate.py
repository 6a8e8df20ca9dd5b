"""What the broker refuses at the edge: a submission's limits, signal numbers, message names."""

from __future__ import annotations

import signal as _signal

from .. import protocol as p
from .. import resources as r

MAX_JOB_ID = 64
#: The most arguments and environment Linux runs (6 MiB: a quarter of the stack
#: limit, at most three quarters of 8 MiB); clients check their own ARG_MAX first.
MAX_EXEC_BYTES = 6 << 20
MAX_TERMINAL = 10_000
#: Bytes searched for as ints (see _validate_submit).
_NUL, _EQUALS = 0, ord("=")


def _kind(message: p.Message) -> str:
    """A message's name as peers know it (the server's relayed views are Input and Output)."""
    return type(message).__name__.removeprefix("Relayed")


def _valid_signal(signum: int) -> bool:
    return 0 < signum < _signal.NSIG


def _validate_submit(msg: p.Submit) -> str:
    """Why this submission is refused ('' if it is fine)."""
    if not msg.job_id or len(msg.job_id) > MAX_JOB_ID or not msg.job_id.isprintable():
        return f"job id must be 1 to {MAX_JOB_ID} printable characters"
    spec = msg.spec
    if not spec.argv or not spec.argv[0]:
        return "empty command line"
    env = spec.env  # C-level sums: a job carries its whole environment
    size = sum(map(len, spec.argv)) + len(spec.argv) + sum(map(len, env)) + sum(map(len, env.values())) + 2 * len(env)
    if size > MAX_EXEC_BYTES:
        return f"arguments and environment longer than {MAX_EXEC_BYTES} bytes (the most Linux runs)"
    if not (0 <= spec.rows <= MAX_TERMINAL and 0 <= spec.cols <= MAX_TERMINAL):
        return f"terminal size must be 0 to {MAX_TERMINAL}"
    if spec.max_attempts < 1:
        return "max_attempts must be at least 1"
    if spec.timeout is not None and not (0 < spec.timeout < float("inf")):
        return "timeout must be a positive number of seconds"
    if spec.stage and len(spec.stage) != 32:
        return "stage must be a 32-byte digest"
    if spec.stage_push and (not spec.stage or any(len(digest) != 32 for digest, _data in spec.stage_push)
                            or sum(len(data) for _digest, data in spec.stage_push) > p.MAX_STAGE_PUSH):
        return f"stage_push must be blobs (32-byte digests) of a staged tree, at most {p.MAX_STAGE_PUSH} bytes"
    # One C-level search over all of it (a job carries its whole environment), for an int:
    # ``b"\0" in text`` first tries its operand as an int, and CPython formats the
    # TypeError it then drops, a dozen times the cost of the search (20 us a job).
    texts = [*spec.argv, spec.cwd, *spec.env, *spec.env.values()]
    if _NUL in b"".join(texts) or _EQUALS in b"".join(spec.env) or b"" in spec.env:
        return "NUL byte in the command line, directory or environment, or a bad variable name"
    if spec.cwd.startswith(b"/") == bool(spec.stage):  # a staged job's is relative to its tree
        return "the directory must be an absolute path (relative to the staged tree with --stage)"
    if any(fd not in (0, 1, 2) for fd in spec.closed_fds) or not all(_valid_signal(s) for s in
                                                                       (*spec.ignored_signals, *spec.blocked_signals)):
        return "closed_fds must be among 0, 1, 2, and signals valid signal numbers"
    if not -1 <= spec.umask <= 0o777:
        return "umask must be 0 to 0o777 (or -1)"
    problem = r.request_problem(spec.resources)
    if problem:
        return problem
    if msg.attempt < 0 or msg.ticket < 0 or any(o < 0 for o in msg.offsets) or len(msg.offsets) != 2:
        return "negative attempt, ticket or offset"
    return ""
