"""A real single-node Slurm for these tests, started once per session by
scripts/slurm-cluster.sh (which installs it from Debian's packages if needed).

If Slurm cannot start, every test here fails with the script's output: in CI
they must not be skipped silently.  Developers without Slurm set
JOBQUEUE_SKIP_SLURM=1 to skip them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
EXAMPLES = ROOT / "examples" / "slurm"
#: Installing the packages on a fresh machine takes most of this (~10 s here);
#: below the tests' pytest timeout, which covers the session fixture's start.
START_TIMEOUT = 170


def _script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _exports(text: str) -> dict[str, str]:
    """``export NAME=VALUE`` lines -> {NAME: VALUE}."""
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """The environment (SLURM_CONF) for Slurm commands on the test cluster."""
    if os.environ.get("JOBQUEUE_SKIP_SLURM") == "1":
        pytest.skip("JOBQUEUE_SKIP_SLURM=1: Slurm tests skipped")
    was_running = _script("status").returncode == 0
    started = _script("start", timeout=START_TIMEOUT)
    if started.returncode != 0:
        pytest.fail(f"could not start the test Slurm cluster with {SCRIPT} start (exit {started.returncode}):\n"
                    f"{started.stderr}\nRun it by hand to see why, or set JOBQUEUE_SKIP_SLURM=1 to skip "
                    "these tests", pytrace=False)
    env = _exports(started.stdout)
    assert "SLURM_CONF" in env, f"{SCRIPT} start printed no SLURM_CONF: {started.stdout!r}"
    yield env
    if not was_running:  # leave a cluster someone else started (e.g. .ci/run) running
        _script("stop")


class Slurm:
    """Slurm commands on the test cluster; cancels what the test left behind."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=30,
                                env={**(env or os.environ), **self.env}, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def sbatch(self, script: Path, *options: str, env: dict[str, str]) -> str:
        """Submit ``script``; returns the Slurm job id."""
        return self.run("sbatch", "--parsable", *options, str(script), env=env).strip().split(";")[0]

    def jobs(self) -> list[str]:
        """Ids of the jobs in the queue (pending, running or completing), array tasks included."""
        return self.run("squeue", "-h", "-r", "-o", "%i").split()

    def wait_empty(self, timeout: float = 30) -> None:
        wait_for(lambda: not self.jobs(), timeout, "the Slurm queue to be empty")

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "--signal=KILL", "--name=jobqueue-worker", check=False)
        self.run("scancel", "--name=jobqueue-worker", check=False)


@pytest.fixture
def slurm(slurm_env: dict[str, str]) -> Iterator[Slurm]:
    s = Slurm(slurm_env)
    s.cancel_all()
    s.wait_empty()
    yield s
    left = s.jobs()
    s.cancel_all()
    s.wait_empty()
    assert not left, f"the test left Slurm jobs behind: {left}"
