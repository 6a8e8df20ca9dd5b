"""What a job takes from its caller (README "What a job sees"): the caller's side.

``caller_attributes`` reads /proc; here it is checked against what the same
process says through the system calls, after changing each attribute."""

from __future__ import annotations

import os
import resource
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.api_caller import caller_environment as _environment
from jobqueue.api_caller import rlimits as _rlimits
from jobqueue.caller import MAX_ARG_STRLEN, caller_attributes, exec_problem, proc_rlimits

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def restore_process_state():
    mask = os.umask(0o022)
    os.umask(mask)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    usr2 = signal.getsignal(signal.SIGUSR2)
    core = resource.getrlimit(resource.RLIMIT_CORE)
    yield
    os.umask(mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    signal.signal(signal.SIGUSR2, usr2)
    resource.setrlimit(resource.RLIMIT_CORE, core)


def test_caller_attributes_follow_changes_to_umask_signals_and_limits(restore_process_state):
    os.umask(0o027)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGWINCH])
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (0 if hard == 0 else 4096, hard))
    attrs = caller_attributes()
    assert attrs["umask"] == 0o027
    assert {signal.SIGUSR1, signal.SIGWINCH} <= set(attrs["blocked_signals"])  # type: ignore[arg-type]
    assert signal.SIGUSR2 in attrs["ignored_signals"]  # type: ignore[operator]
    assert signal.SIGPIPE not in attrs["ignored_signals"]  # type: ignore[operator]  # Python's own
    assert dict((n, (s, h)) for n, s, h in attrs["rlimits"])["core"] == resource.getrlimit(resource.RLIMIT_CORE)  # type: ignore[misc, union-attr]
    assert attrs["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_the_apis_limits_by_getrlimit_equal_procs(restore_process_state):
    assert _rlimits() == proc_rlimits()
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    assert _rlimits() == proc_rlimits()
    assert caller_attributes(_rlimits()) == caller_attributes()


def test_the_apis_environment_is_a_copy_of_environb(monkeypatch):
    monkeypatch.setenv("JOBQUEUE_TEST_VARIABLE", "one")
    env = _environment()
    assert env == dict(os.environb) and env[b"JOBQUEUE_TEST_VARIABLE"] == b"one"
    env[b"JOBQUEUE_TEST_VARIABLE"] = b"two"
    assert os.environ["JOBQUEUE_TEST_VARIABLE"] == "one"


def test_exec_problem_counts_what_linux_counts():
    assert exec_problem([b"true"], {b"A": b"1"}) == ""
    assert exec_problem([b"x" * (MAX_ARG_STRLEN - 1)], {}) == ""  # with its NUL: exactly the limit
    assert "one argument or variable" in exec_problem([b"x" * MAX_ARG_STRLEN], {})
    # a variable counts as NAME=VALUE with its NUL
    assert exec_problem([b"a"], {b"A": b"x" * (MAX_ARG_STRLEN - 3)}) == ""
    assert "one argument or variable" in exec_problem([b"a"], {b"A": b"x" * (MAX_ARG_STRLEN - 2)})
    many = [b"x" * 1000] * 7000  # 7 MB: past ARG_MAX whatever the stack limit
    assert "bytes of arguments and environment" in exec_problem(many, {})
    assert exec_problem([], {}) == ""


def _exec_problem_by_the_book(argv: list[bytes], env: dict[bytes, bytes]) -> tuple[int, int]:
    """What Linux counts, string by string: (all of it, the longest string), NULs and pointers included."""
    strings = [*argv, *(name + b"=" + value for name, value in env.items())]
    return 8 * (len(strings) + 2) + sum(len(s) + 1 for s in strings), max((len(s) + 1 for s in strings), default=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, MAX_ARG_STRLEN + 2), max_size=4),
       st.dictionaries(st.binary(min_size=1, max_size=8), st.integers(0, MAX_ARG_STRLEN), max_size=4))
def test_exec_problem_agrees_with_counting_each_string(arg_sizes: list[int], env_sizes: dict[bytes, int]) -> None:
    argv = [b"a" * n for n in arg_sizes]
    env = {name: b"v" * n for name, n in env_sizes.items()}
    size, longest = _exec_problem_by_the_book(argv, env)
    problem = exec_problem(argv, env)
    if "bytes of arguments and environment" in problem:
        assert f" {size} bytes" in problem
    elif longest > MAX_ARG_STRLEN:
        assert f"has {longest - 1} bytes" in problem
    else:
        assert problem == ""


def test_the_apis_kept_status_file_is_read_afresh_and_per_thread(restore_process_state):
    import threading

    from jobqueue.api_caller import thread_status as _thread_status

    os.umask(0o077)
    assert caller_attributes(_rlimits(), _thread_status.read())["umask"] == 0o077
    os.umask(0o002)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    here = caller_attributes(_rlimits(), _thread_status.read())
    assert here["umask"] == 0o002 and signal.SIGUSR1 in here["blocked_signals"]  # type: ignore[operator]
    there: list[object] = []

    def other_thread() -> None:  # its own signal mask: SIGUSR1 unblocked there
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        there.append(caller_attributes(_rlimits(), _thread_status.read())["blocked_signals"])

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert there and signal.SIGUSR1 not in there[0]  # type: ignore[operator]
    assert caller_attributes(_rlimits(), _thread_status.read()) == caller_attributes()
