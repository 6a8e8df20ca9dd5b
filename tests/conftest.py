"""Test harness: real servers, workers and jq processes on per-test endpoints.

Every process a test starts is recorded and killed by pid (with its process
group and any children) when the test ends.  Nothing waits with a fixed
sleep: :func:`wait_for` polls a condition until a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

BIN = Path(sys.executable).parent
# No stage watcher is started behind a test's back (jq starts one for large trees): the
# tests of the watcher turn it on and stop it themselves.
os.environ["JOBQUEUE_STAGE_WATCH"] = "0"
#: Fast liveness for tests: a heartbeat every 0.2 s, lost after 1 s.
HEARTBEAT = 0.2


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its children, and the process groups they lead."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@dataclass
class Cluster:
    """Starts jobqueue processes for one test, on the test's own endpoint."""

    tmp: Path
    endpoint: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tracked: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["JOBQUEUE_SERVER"] = self.endpoint
        env.pop("JOBQUEUE_KEY", None)
        env.pop("JOBQUEUE_SERVER_KEY", None)
        env.update(extra)
        return env

    def spawn(self, args: list[str], *, log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{log}-{len(self.logs)}.log"
        self.logs.append(path)
        kwargs.setdefault("stdout", open(path, "wb"))
        kwargs.setdefault("stderr", subprocess.STDOUT)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("env", self.env())
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def server(self, *args: str, endpoint: str | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
        proc = self.spawn([str(BIN / "jobqueue-server"), endpoint or self.endpoint, "--heartbeat", str(HEARTBEAT),
                           *args], log="server")
        if wait:
            wait_for(lambda: self.status(timeout=0.5) is not None, 10, "server to answer")
        return proc

    def worker(self, *args: str, name: str | None = None, wait: bool = True,
               endpoint: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.procs)}"
        proc = self.spawn([str(BIN / "jobqueue-worker"), endpoint or self.endpoint, "--name", name,
                           "--kill-grace", "1", *args], log=f"worker-{name}")
        if wait:
            self.wait_worker(name)
        return proc

    def wait_worker(self, name: str, state: str | None = None, timeout: float = 10) -> None:
        def ready() -> bool:
            st = self.status(timeout=0.5)
            return bool(st) and any(w["name"] == name and (state is None or w["state"] == state)
                                    for w in st["workers"])

        wait_for(ready, timeout, f"worker {name} to connect")

    def jq(self, *args: str, input: bytes | None = None, timeout: float = 30, env: dict[str, str] | None = None,
           cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run jq to completion (killed, with a failure, past ``timeout``)."""
        proc = self.popen_jq(*args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             env=env, cwd=cwd)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, err = proc.communicate()
            raise AssertionError(f"jq {args} did not end in {timeout}s; stderr: {err[-2000:]!r}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen_jq(self, *args: str, stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.PIPE,
                 stderr: Any = subprocess.PIPE, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(BIN / "jq"), *args], stdin=stdin, stdout=stdout, stderr=stderr,
                                env=env or self.env(), cwd=cwd or str(self.tmp))
        self.procs.append(proc)
        return proc

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The server's status as JSON, or None if it does not answer."""
        result = subprocess.run([str(BIN / "jobqueue"), "status", "--json", "-s", self.endpoint,
                                 "--timeout", str(timeout)], capture_output=True, env=self.env(),
                                timeout=timeout + 10)
        if result.returncode != 0:
            return None
        return dict(json.loads(result.stdout))

    def jobs(self) -> list[dict[str, Any]]:
        st = self.status()
        return st["jobs"] if st else []

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists())

    def track(self, pid: int) -> None:
        """Kill this process (and its descendants) at the end too: one not started by
        :meth:`spawn` (e.g. by pexpect)."""
        self.tracked.append(pid)

    def stop(self) -> None:
        for pid in reversed(self.tracked):
            kill_tree(pid)
        for proc in reversed(self.procs):
            kill_tree(proc.pid)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    sockdir = tempfile.mkdtemp(prefix="jqt-")  # ipc paths must stay short (108 bytes)
    c = Cluster(tmp_path, f"ipc://{sockdir}/s")
    yield c
    c.stop()
    shutil.rmtree(sockdir, ignore_errors=True)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(c.log_text()[-20000:])


@pytest.fixture
def tcp_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, f"tcp://127.0.0.1:{free_port()}")
    yield c
    c.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(c.log_text()[-20000:])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def descendants_alive(pid_file: Path) -> bool:
    """Whether the pid written in ``pid_file`` still runs."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
