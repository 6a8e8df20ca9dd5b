"""What jq sends as the job (:func:`jobqueue.jq.build_spec`): its own process as it stands, in bytes."""

from __future__ import annotations

import os

import pytest

from jobqueue import jq
from jobqueue.caller import caller_environment


def test_argv_environment_and_directory_are_the_bytes_we_were_given() -> None:
    pwd = caller_environment().get(b"PWD", b"")  # the environment we started with (/proc/self/environ)
    spec = jq.build_spec(jq.parse_args(["-C", "sub", "-e", "X=caf\udce9", "printf", "%s", "\udcff"]))
    assert spec.argv == [b"printf", b"%s", b"\xff"]  # surrogate escapes are the original bytes
    assert spec.env[b"X"] == b"caf\xe9" and spec.cwd == os.path.join(os.getcwdb(), b"sub")
    base = pwd if pwd.startswith(b"/") else os.getcwdb()
    assert (spec.env[b"PWD"], spec.env[b"OLDPWD"]) == (os.path.join(base, b"sub"), pwd or base)  # as `cd sub`
    assert spec.umask == (lambda m: (os.umask(m), m)[1])(os.umask(0)) and spec.rlimits and spec.nice is not None


def test_arguments_past_arg_max_are_refused_as_a_shell_would(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(jq.Exit) as e:
        jq.build_spec(jq.parse_args(["echo", "y" * os.sysconf("SC_ARG_MAX")]))
    assert e.value.code == 126 and "echo: argument list too long" in e.value.message and "ARG_MAX" in e.value.message
    with pytest.raises(jq.Exit, match="one argument or variable"):
        jq.build_spec(jq.parse_args(["echo", "y" * 200_000]))
