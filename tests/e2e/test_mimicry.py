"""End-to-end: what a job can observe about how it was started is what the command
would observe run locally (README "What a job sees").

Each test runs the same shell script twice: with ``$JQ`` empty (the command runs
here) and with ``$JQ`` = jq (it runs on a worker), and compares what they print.
Where a difference is deliberate, the test proves the documented behaviour.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys

import pytest

import jobqueue
from tests.conftest import BIN, Cluster, wait_for

JQ = str(BIN / "jq")


def both(cluster: Cluster, script: str, *, shell: str = "sh", env: dict[str, str] | None = None,
         stdin: bytes | None = None, timeout: float = 30,
         **popen: object) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """``script`` run locally (``$JQ`` empty) and through jq (``$JQ`` is jq)."""
    results = []
    popen.setdefault("stdout", subprocess.PIPE)
    for jq in ("", JQ):
        results.append(subprocess.run([shell, "-c", script.replace("$JQ", jq)], env=env or cluster.env(),
                                      cwd=str(cluster.tmp), input=stdin, stderr=subprocess.PIPE, timeout=timeout,
                                      **popen))  # type: ignore[call-overload]
    return results[0], results[1]


def same(cluster: Cluster, script: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """``script`` prints the same (stdout, stderr, exit code) locally and through jq."""
    local, remote = both(cluster, script, **kwargs)  # type: ignore[arg-type]
    if b"\0" in local.stdout and local.stdout != remote.stdout:  # an environment: say which entries differ
        ours, theirs = set(local.stdout.split(b"\0")), set(remote.stdout.split(b"\0"))
        assert ours - theirs == theirs - ours
    assert (remote.returncode, remote.stdout, remote.stderr) == (local.returncode, local.stdout, local.stderr)
    return local


@pytest.fixture
def up(cluster: Cluster) -> Cluster:
    cluster.server()
    cluster.worker(name="w1")
    return cluster


# --- 1. bytes: arguments, environment, directory ---------------------------------------------


def test_arguments_are_bytes_exactly(up: Cluster) -> None:
    """The issue's example: arguments that are not UTF-8 (old Latin-1 file names);
    empty ones, ones that start with '-'."""
    out = same(up, """$JQ printf '%s|' "$(printf '\\377\\376')" "$(printf 'caf\\351')" '' -n --x -- '-' """)
    assert out.stdout == b"\xff\xfe|caf\xe9||-n|--x|--|-|"
    out = same(up, r"""printf x > "$(printf 'caf\351.txt')"; for f in caf*.txt; do $JQ rm -- "$f"; done; ls""")
    assert b"caf" not in out.stdout


def test_status_shows_such_arguments_readably(up: Cluster) -> None:
    jq = up.popen_jq("sh", "-c", "sleep 30", os.fsdecode(b"caf\xe9"), "d\u00e9j\u00e0")
    jobs = wait_for(lambda: [j for j in up.jobs() if j["state"] == "running"], 15, "the job to run")
    assert jobs[0]["argv"] == ["sh", "-c", "sleep 30", "caf\\xe9", "d\u00e9j\u00e0"]
    jq.send_signal(signal.SIGTERM)
    assert jq.wait(timeout=15) == 143


def test_directory_and_chdir_are_bytes_exactly(up: Cluster) -> None:
    odd = up.tmp / os.fsdecode(b"d\xe9j\xe0")
    odd.mkdir()
    same(up, """cd d*; $JQ sh -c 'pwd; echo "$PWD"'""")
    # -C DIR runs the job as `cd DIR && CMD` would: PWD and OLDPWD follow
    local = subprocess.run(["sh", "-c", """cd d* && sh -c 'pwd; echo "$PWD $OLDPWD"'"""], env=up.env(),
                           cwd=str(up.tmp), capture_output=True, timeout=30)
    remote = subprocess.run(["sh", "-c", f"""{JQ} -C "$(printf 'd\\351j\\340')" sh -c 'pwd; echo "$PWD $OLDPWD"'"""],
                            env={**up.env(), "PWD": str(up.tmp)}, cwd=str(up.tmp), capture_output=True,
                            timeout=30)
    assert (remote.returncode, remote.stdout) == (0, local.stdout)
    assert os.fsencode(str(odd)) in local.stdout


def test_every_variable_travels_byte_exact_and_no_worker_variable_leaks(cluster: Cluster) -> None:
    """'=' in values, empty values, bytes that are not UTF-8 in names and values,
    PWD, OLDPWD, SHLVL; the worker's own variables stay out of jobs."""
    cluster.server()
    cluster.spawn([str(BIN / "jobqueue-worker"), cluster.endpoint, "--name", "wenv"], log="worker-wenv",
                  env=cluster.env(WORKER_ONLY="secret"))
    cluster.wait_worker("wenv")
    script = """export A='x=y==z' EMPTY= B="$(printf 'caf\\351')" OLDPWD=/somewhere SHLVL=7
                env "$(printf 'N\\351')=v" $JQ env -0 | sort -z"""
    out = same(cluster, script)
    entries = out.stdout.split(b"\0")
    assert {b"A=x=y==z", b"EMPTY=", b"B=caf\xe9", b"N\xe9=v", b"SHLVL=7", b"OLDPWD=/somewhere"} <= set(entries)
    assert b"WORKER_ONLY" not in out.stdout
    # Python adds LC_CTYPE to its own environment under a C locale: the job does not see it
    minimal = {"PATH": cluster.env()["PATH"], "JOBQUEUE_SERVER": cluster.endpoint, "LANG": "C"}
    out = same(cluster, "$JQ env -0 | sort -z", env=minimal)
    assert b"LC_CTYPE" not in out.stdout
    same(cluster, """$JQ bash -c 'echo "$SHLVL"'""")


def test_api_takes_bytes_and_path_likes_as_subprocess_run_does(up: Cluster) -> None:
    odd = up.tmp / os.fsdecode(b"r\xe9p")
    odd.mkdir()
    args = [b"sh", "-c", b'printf "%s|" "$@" "$V" "$PWD"; pwd', pathlib.Path("p"), b"\xff", ""]
    env = {**{k.encode(): v.encode() for k, v in up.env().items()}, b"V": b"\xe9=1"}
    local = subprocess.run(args, env=env, cwd=os.fsencode(str(odd)), capture_output=True)
    remote = jobqueue.run(args, env=env, cwd=odd, capture_output=True, server=up.endpoint)
    assert (remote.returncode, remote.stdout) == (local.returncode, local.stdout) == (0, local.stdout)
    assert local.stdout.startswith(b"\xff||\xe9=1|")


# --- 2. a reader that leaves early ---------------------------------------------------------------


def test_api_job_writing_to_our_stdout_meets_sigpipe_as_subprocess_run(up: Cluster) -> None:
    code = ("import subprocess, sys, jobqueue\n"
            "run = jobqueue.run if sys.argv[1] == 'api' else subprocess.run\n"
            "kwargs = {'server': sys.argv[2]} if sys.argv[1] == 'api' else {}\n"
            "print(run(['yes'], **kwargs).returncode, file=sys.stderr)")
    results = [subprocess.run(f"{sys.executable} -c \"{code}\" {how} {up.endpoint} | head -n 1", shell=True,
                              capture_output=True, timeout=30) for how in ("local", "api")]
    assert [(r.stdout, r.stderr) for r in results] == [(b"y\n", b"-13\n")] * 2


def test_reader_that_leaves_early_ends_the_job_with_sigpipe(up: Cluster) -> None:
    (up.tmp / "big").write_bytes(os.urandom(8 << 20))
    out = same(up, "$JQ yes | head -n 1; echo ${PIPESTATUS[@]}", shell="bash")
    assert out.stdout == b"y\n141 0\n"
    out = same(up, "$JQ cat big | head -c 10 | wc -c; echo ${PIPESTATUS[@]}", shell="bash")
    assert out.stdout == b"10\n141 0 0\n"
    out = same(up, "timeout 20 $JQ yes | head -n 2; echo ${PIPESTATUS[@]}", shell="bash")
    assert out.stdout == b"y\ny\n141 0\n"
    # the reader leaves before the job writes: its first write meets SIGPIPE (nothing after it runs)
    out = same(up, "$JQ sh -c 'sleep 0.5; echo hi; echo after >&2' | true; echo ${PIPESTATUS[@]}", shell="bash")
    assert out.stdout == b"141 0\n" and out.stderr == b""
    # the job is blocked writing (pipes full) when its reader leaves
    out = same(up, "$JQ yes | (sleep 0.5); echo ${PIPESTATUS[@]}", shell="bash")
    assert out.stdout == b"141 0\n"
    # the same for stderr; a job that handles EPIPE itself sees it
    script = """$JQ sh -c 'trap "" PIPE; yes >&2; exit 3' 2>&1 >/dev/null | head -c 1; echo " ${PIPESTATUS[@]}" """
    out = same(up, script, shell="bash")
    assert out.stdout == b"y 3 0\n"
    up.wait_worker("w1", state="idle")  # and the worker is free


def test_under_timeout_the_job_ends_as_locally(up: Cluster) -> None:
    out = same(up, "timeout 1 $JQ sleep 20; echo $?")
    assert out.stdout == b"124\n"


# --- 3. process attributes --------------------------------------------------------------------------


def test_umask_limits_and_nice_are_the_callers(up: Cluster) -> None:
    script = """umask 027; ulimit -S -n 512; ulimit -H -n 4000; ulimit -c 0; ulimit -s 4096; ulimit -t 1000
                ulimit -S -d 4000000; nice -n 3 $JQ sh -c 'umask; ulimit -S -n; ulimit -H -n; ulimit -c; ulimit -s;
                ulimit -t; ulimit -d; nice; getconf ARG_MAX; touch made; stat -c %a made'"""
    out = same(up, script)
    assert out.stdout.split() == [b"0027", b"512", b"4000", b"0", b"4096", b"1000", b"4000000", b"3", b"1048576",
                                  b"640"]
    same(up, "$JQ sh -c 'umask; ulimit -n; nice'")  # and the worker's own, unchanged, for the next job


BLOCKER = (f"{sys.executable} -c 'import os, signal, sys; "
           "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGPIPE, signal.SIGXFSZ)]; "
           "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGWINCH]); os.execvp(sys.argv[1], "
           "sys.argv[1:])'")


#: The C library's own signals (32, 33), which Linux's posix_spawn leaves ignored in the child
#: (the C library installs its handlers when it needs them): README "What a job sees".
LIBC_SIGNALS = 1 << 31 | 1 << 32


def test_signals_ignored_or_blocked_at_start_are_so_for_the_job(up: Cluster) -> None:
    local, remote = both(up, f"trap '' INT HUP USR2; {BLOCKER} $JQ grep -E '^Sig(Ign|Blk)' /proc/self/status")
    masks = []
    for out in (local, remote):
        assert out.returncode == 0, out.stderr
        ignored, blocked = (int(line.split()[1], 16) for line in out.stdout.decode().splitlines()[::-1])
        masks.append((ignored & ~LIBC_SIGNALS, blocked))
    assert masks[0] == masks[1]
    ignored, blocked = masks[1]
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        assert ignored & 1 << (signum - 1)
    assert blocked == 1 << (signal.SIGUSR1 - 1) | 1 << (signal.SIGWINCH - 1)
    # jq started in the background of a script ignores SIGINT, and so does its job: a Ctrl-C is not forwarded
    out = same(up, """$JQ sh -c 'sleep 1; echo survived' & pid=$!; sleep 0.3; kill -INT $pid; wait $pid; echo $?""")
    assert out.stdout == b"survived\n0\n"


# --- 4. stdin, stdout and stderr -----------------------------------------------------------------


def test_closed_stdio_stays_closed(up: Cluster) -> None:
    same(up, "$JQ sh -c 'echo out; echo \"status $?\" >&2' >&-")
    same(up, "$JQ sh -c 'echo err >&2; echo \"status $?\"' 2>&-")
    same(up, "$JQ sh -c 'cat; echo \"status $?\"' <&-")


def test_stdout_and_stderr_one_file_keep_their_order(up: Cluster) -> None:
    """2>&1: the job's stdout and stderr are one pipe, so they interleave exactly as written."""
    out = same(up, "$JQ sh -c 'for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; done' 2>&1 | cat")
    assert out.stdout.split() == [f"{s}{i}".encode() for i in range(1, 7) for s in ("out", "err")]
    same(up, "$JQ sh -c 'for i in 1 2 3; do echo out$i; echo err$i >&2; done' >log 2>&1; cat log")
    same(up, "$JQ sh -c 'echo out; echo err >&2' 2>&1 >/dev/null | cat")  # apart: only stderr here


def test_stdout_on_a_file_or_terminal_is_a_pipe_for_the_job(up: Cluster) -> None:
    """Documented: without -t a job's stdout is a pipe (as under srun); the bytes are the same."""
    check = "$JQ sh -c '[ -p /dev/stdout ] && echo pipe >&2 || echo other >&2; echo data'"
    local, remote = both(up, f"{check} > out; cat out")
    assert (local.stdout, local.stderr) == (remote.stdout, b"other\n") and remote.stderr == b"pipe\n"
    primary, secondary = os.openpty()
    try:
        local, remote = both(up, "$JQ sh -c '[ -t 1 ] && echo terminal >&2 || echo no-terminal >&2'",
                             stdout=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert (local.stderr, remote.stderr) == (b"terminal\n", b"no-terminal\n")


def test_only_fds_0_to_2_travel_and_the_job_has_its_own_session(up: Cluster) -> None:
    """Documented: a job gets no fd above 2 of jq's, and runs in its own session."""
    script = ("$JQ sh -c '[ -e /proc/$$/fd/3 ] && echo fd3 || echo no-fd3; [ $(ps -o sid= -p $$) = $$ ] && echo own'"
              " 3<&0")
    local, remote = both(up, script)
    assert (local.stdout, remote.stdout) == (b"fd3\n", b"no-fd3\nown\n")


# --- 5. arguments: many, long, xargs -------------------------------------------------------------


def test_a_hundred_thousand_arguments(up: Cluster) -> None:
    out = same(up, "$JQ sh -c 'echo $#; echo \"$1 ${100000}\"' x $(seq 100000)")
    assert out.stdout == b"100000\n1 100000\n"


def test_arguments_near_arg_max_and_past_it(up: Cluster) -> None:
    arg_max = os.sysconf("SC_ARG_MAX")
    env_size = sum(len(k) + len(v) + 2 + 8 for k, v in os.environb.items()) + 4096
    args = [b"y" * 4000] * ((arg_max - env_size - 64 * 1024) // 4009)
    r = up.jq("sh", "-c", 'echo $#; printf %s "$@" | wc -c', "x", *map(os.fsdecode, args), timeout=60)
    assert (r.returncode, r.stdout.split()) == (0, [str(len(args)).encode(), str(4000 * len(args)).encode()])
    # past the limit: what subprocess.run raises, before anything is queued
    for too_long in ([b"echo", b"y" * arg_max], [b"echo", b"y" * 200_000]):
        with pytest.raises(OSError) as local:
            subprocess.run(too_long)
        with pytest.raises(OSError) as remote:
            jobqueue.run(too_long, server=up.endpoint)
        assert local.value.errno == remote.value.errno == errno.E2BIG
        assert "limit" in str(remote.value)


def test_past_the_workers_arg_max_is_a_clear_126(cluster: Cluster) -> None:
    """A worker whose stack limit (so its ARG_MAX) is lower than the caller's says so."""
    cluster.server()
    cluster.spawn(["sh", "-c", 'ulimit -s 1024; exec "$@"', "sh", str(BIN / "jobqueue-worker"), cluster.endpoint,
                   "--name", "wsmall"], log="worker-wsmall")
    cluster.wait_worker("wsmall")
    r = cluster.jq("true", *["y" * 1000] * 600)
    assert r.returncode == 126
    assert b"true: Argument list too long on worker wsmall" in r.stderr


def test_xargs_batches_fit(up: Cluster) -> None:
    """xargs sizes its batches to the local limit (up to the most it may use): the job,
    whose command line is shorter by jq's name, fits on the worker."""
    out = same(up, "seq 200000 | xargs -s 2000000 $JQ printf '%s\\n' 2>/dev/null | md5sum")
    expected = subprocess.run("seq 200000 | md5sum", shell=True, capture_output=True).stdout
    assert out.stdout == expected


# --- 6. a background child that keeps stdout open ---------------------------------------------------


def test_background_child_is_ended_with_its_job(up: Cluster) -> None:
    """Documented: when the job's main process exits, what remains of its process group
    is killed (as Slurm does); the exit status is the main process's, as locally."""
    script = "$JQ sh -c '(sleep 1; echo late) & echo early; exit 5' | cat; echo ${PIPESTATUS[0]}"
    local, remote = both(up, script, shell="bash")
    assert local.stdout == b"early\nlate\n5\n"
    assert remote.stdout == b"early\n5\n"
    wait_for(lambda: not any(j["state"] == "running" for j in up.jobs()), 10, "the job to end")
