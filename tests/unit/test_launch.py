"""How a job's process starts (:func:`jobqueue.launch.plan`): pure, from the spec and the worker's state."""

from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from jobqueue import launch
from jobqueue import protocol as p

INF = launch.INFINITY
OWN = launch.OwnState(0o022, {name: (1024, 4096) if name == "nofile" else (INF, INF) for name in launch.RLIMITS},
                      0, frozenset({signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT}))


def spec(**fields: object) -> p.JobSpec:
    return p.JobSpec([b"x"], {}, b"/", **fields)  # type: ignore[arg-type]


def test_a_job_like_the_worker_needs_nothing_but_the_default_signals_back() -> None:
    plan = launch.plan(spec(umask=0o022, rlimits=[("nofile", 1024, 4096)], nice=0), OWN)
    assert plan == launch.Plan(None, (), None, (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ), (), (), (), False)
    assert not plan.needs_fork


def test_what_differs_is_set_and_only_then_a_fork() -> None:
    plan = launch.plan(spec(umask=0o077, rlimits=[("nofile", 256, 4096), ("core", 0, 0), ("bogus", 1, 1)], nice=5,
                            ignored_signals=[signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                            blocked_signals=[signal.SIGUSR1, signal.SIGSTOP], closed_fds=[1], merge_output=True), OWN)
    assert plan.umask == 0o077 and plan.nice == 5
    assert set(plan.rlimits) == {(launch.RLIMITS["nofile"], 256, 4096), (launch.RLIMITS["core"], 0, 0)}
    assert plan.sigdef == (signal.SIGPIPE, signal.SIGXFSZ) and plan.sigign == (signal.SIGHUP,)
    assert plan.sigmask == (signal.SIGUSR1,) and plan.closed == (1,) and not plan.merge_output
    assert plan.needs_fork


def test_nice_below_the_workers_needs_privilege() -> None:
    assert launch.plan(spec(nice=-5), OWN).nice is None
    assert launch.plan(spec(nice=-5), launch.OwnState(0o022, OWN.rlimits, 0, OWN.ignored, privileged=True)).nice == -5


limits = st.integers(-1, 1 << 20)


@given(limits, limits)
def test_limits_never_pass_the_workers_hard_limit_and_soft_never_passes_hard(soft: int, hard: int) -> None:
    plan = launch.plan(spec(rlimits=[("nofile", soft, hard)]), OWN)
    got_soft, got_hard = next(((s, h) for _r, s, h in plan.rlimits), OWN.rlimits["nofile"])
    assert got_hard <= 4096 and got_soft <= got_hard
    if 0 <= hard <= 4096 and 0 <= soft <= hard:
        assert (got_soft, got_hard) == (soft, hard)


def test_file_actions_close_dup_or_open_dev_null() -> None:
    plan = launch.plan(spec(closed_fds=[2]), OWN)
    assert launch.spawn_file_actions(plan, None, 7, 8) == [
        (launch.os.POSIX_SPAWN_OPEN, 0, launch.os.devnull, launch.os.O_RDONLY, 0),
        (launch.os.POSIX_SPAWN_DUP2, 7, 1), (launch.os.POSIX_SPAWN_CLOSE, 2)]


def test_signals_of_the_c_library_are_left_alone() -> None:
    """A caller (hyperfine) may show glibc's own signals 32 and 33 as ignored: no job can set them."""
    plan = launch.plan(spec(ignored_signals=[32, 33, signal.SIGHUP], blocked_signals=[32, signal.SIGUSR1]), OWN)
    assert plan.sigign == (signal.SIGHUP,) and plan.sigmask == (signal.SIGUSR1,)
    launch.child_setup(launch.Plan(None, (), None, (32,), (33,), (), (), False))  # builds; never raises in the child


# --- what posix_spawn cannot set, set by helpers that exec the job (launch.helper_argv) -------------

HELPERS = launch.Helpers("/usr/bin/prlimit", "/usr/bin/nice", "/usr/bin/env")


def test_a_plan_without_limits_nice_or_ignored_signals_runs_the_command_as_is() -> None:
    plan = launch.plan(spec(umask=0o077, blocked_signals=[signal.SIGUSR1]), OWN)
    assert launch.helper_argv(plan, 0, HELPERS, [b"x", b"-y"]) == [b"x", b"-y"]


def test_each_attribute_has_its_helper_in_front_of_the_command_the_limits_last() -> None:
    plan = launch.plan(spec(rlimits=[("nofile", 256, 4096), ("core", 0, -1)], nice=7,
                            ignored_signals=[signal.SIGHUP, signal.SIGINT]), OWN)
    argv = launch.helper_argv(plan, 2, HELPERS, [b"-odd name", b"a=b"])
    assert argv is not None
    assert argv[:8] == [b"/usr/bin/env", b"--ignore-signal=1", b"--",  # SIGINT: the worker ignores it already
                        b"/usr/bin/nice", b"-n", b"5", b"--",  # nice adds to the worker's own value (2)
                        b"/usr/bin/prlimit"]
    prlimit_end = argv.index(b"--", 8)
    assert set(argv[8:prlimit_end]) == {b"--nofile=256:4096", b"--core=0:unlimited"}
    assert argv[prlimit_end + 1:] == [b"-odd name", b"a=b"]


def test_unlimited_is_said_in_words() -> None:
    own = launch.OwnState(0o022, {name: (INF, INF) for name in launch.RLIMITS}, 0, frozenset())
    plan = launch.plan(spec(rlimits=[("cpu", 10, -1)]), own)
    assert launch.helper_argv(plan, 0, HELPERS, [b"x"]) == [b"/usr/bin/prlimit", b"--cpu=10:unlimited", b"--", b"x"]


def test_a_missing_helper_or_a_name_env_would_misread_means_a_fork() -> None:
    plan = launch.plan(spec(ignored_signals=[signal.SIGHUP]), OWN)
    assert launch.helper_argv(plan, 0, launch.Helpers("/p", "/n", None), [b"x"]) is None  # env before 8.31
    assert launch.helper_argv(plan, 0, HELPERS, [b"A=1"]) is None  # env would take it for a variable
    assert launch.helper_argv(plan, 0, HELPERS, [b"-"]) is None  # and this for -i
    assert launch.helper_argv(launch.plan(spec(nice=5), OWN), 0, launch.Helpers("/p", None, "/e"), [b"x"]) is None
    limited = launch.plan(spec(rlimits=[("nofile", 1, 1)]), OWN)
    assert launch.helper_argv(limited, 0, launch.Helpers(None, "/n", "/e"), [b"A=1"]) is None
    assert launch.helper_argv(limited, 0, launch.Helpers("/p", None, None), [b"A=1"]) == [
        b"/p", b"--nofile=1:1", b"--", b"A=1"]  # prlimit takes any name after --
    both = launch.plan(spec(rlimits=[("nofile", 1, 1)], ignored_signals=[signal.SIGHUP]), OWN)
    assert launch.helper_argv(both, 0, HELPERS, [b"A=1"]) == [  # env's next word is prlimit's path
        b"/usr/bin/env", b"--ignore-signal=1", b"--", b"/usr/bin/prlimit", b"--nofile=1:1", b"--", b"A=1"]
