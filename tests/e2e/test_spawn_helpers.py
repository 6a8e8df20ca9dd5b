"""The worker's spawner gives a job what posix_spawn cannot (limits, a higher nice value,
ignored signals) through prlimit, nice and env --ignore-signal, which exec the job, or
through a fork where one is missing: the job cannot tell which (real processes, no server)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from jobqueue import launch
from jobqueue import protocol as p
from jobqueue.worker.spawn import Spawner, Started

REPO = pathlib.Path(__file__).resolve().parents[2]

#: The C library's own signals, which Linux's posix_spawn leaves ignored in the child.
LIBC_SIGNALS = 1 << 31 | 1 << 32
#: The job reads how it stands itself (a shell in between would have its own say on its mask).
ARGV = [b"cat", b"/proc/self/status", b"/proc/self/limits", b"/proc/self/stat", b"/proc/self/cmdline"]


def run(spawner: Spawner, spec: p.JobSpec) -> tuple[bytes, int]:
    """The job's stdout and exit code."""
    started = spawner.start(spec)
    assert isinstance(started, Started), started
    out = bytearray()
    os.set_blocking(started.fds[p.STDOUT], True)
    while chunk := os.read(started.fds[p.STDOUT], 65536):
        out += chunk
    for fd in started.fds.values():
        os.close(fd)
    _, status = os.waitpid(started.pid, 0)
    return bytes(out), os.waitstatus_to_exitcode(status)


def how_it_stood(out: bytes) -> dict[str, object]:
    text = out.decode(errors="replace")
    field = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in text.splitlines() if ":" in line}
    limits = {line[:26].strip(): line[26:].split()[:2] for line in text.splitlines() if line.startswith("Max ")}
    stat = text[text.index(") "):].split()  # /proc/PID/stat after the command name
    return {"blocked": int(field["SigBlk"], 16), "ignored": int(field["SigIgn"], 16) & ~LIBC_SIGNALS,
            "nofile": limits["Max open files"], "core": limits["Max core file size"], "nice": int(stat[17]),
            "argv": out[out.rindex(b"cat\0/proc"):].split(b"\0")[:2]}


def job(tmp: str) -> p.JobSpec:
    soft, hard = launch.resource.getrlimit(launch.resource.RLIMIT_NOFILE)
    return p.JobSpec(
        argv=ARGV, env={b"PATH": os.environ["PATH"].encode()}, cwd=tmp.encode(),
        stdin=False, rlimits=[("nofile", min(soft, 64), min(hard, 128)), ("core", 0, 0)],
        nice=os.getpriority(os.PRIO_PROCESS, 0) + 3,  # 5 in the test's child
        ignored_signals=[signal.SIGHUP, signal.SIGUSR2],
        blocked_signals=[signal.SIGUSR1])


def both_ways(tmp: str) -> list[dict[str, object]]:
    """How the job stood, started through the helpers and through a fork (this process's
    nice value matters: nice adds to it)."""
    spec = job(tmp)
    helped, forked = Spawner(), Spawner()
    forked._helpers = launch.Helpers()  # none found: every such job forks
    assert helped.helpers().prlimit and helped.helpers().nice and helped.helpers().env, "Debian has all three"
    seen = []
    for spawner in (helped, forked):
        out, code = run(spawner, spec)
        assert code == 0, out
        seen.append(how_it_stood(out) | {"wanted_nice": spec.nice, "wanted_nofile": spec.rlimits[0][1:]})
    return seen


@pytest.mark.timeout(30)
def test_helpers_and_the_fork_give_a_job_the_same_limits_nice_and_signals(tmp_path: pathlib.Path) -> None:
    # In a child with a nice value of 2, so that the job's (5) is not the increment nice is given.
    code = (f"import json; from tests.e2e.test_spawn_helpers import both_ways; "
            f"print(json.dumps(both_ways({str(tmp_path)!r}), default=lambda b: b.decode()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=25,
                            preexec_fn=lambda: os.nice(2))
    assert result.returncode == 0, result.stderr[-3000:]
    helped, forked = json.loads(result.stdout)
    assert helped == forked
    hup, usr2 = 1 << (signal.SIGHUP - 1), 1 << (signal.SIGUSR2 - 1)
    assert helped["blocked"] == 1 << (signal.SIGUSR1 - 1)
    assert helped["ignored"] & (hup | usr2) == hup | usr2
    assert helped["nofile"] == [str(n) for n in helped["wanted_nofile"]] and helped["core"] == ["0", "0"]
    assert helped["nice"] == helped["wanted_nice"] == 5
    assert helped["argv"] == ["cat", "/proc/self/status"]  # argv[0] as given, not the helper's path
