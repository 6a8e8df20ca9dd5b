"""End-to-end: ``jq -t`` driven through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import signal
import termios
from pathlib import Path

import pexpect
import psutil

from tests.conftest import BIN, Cluster, wait_for

PROMPT = "PROMPT> "


def spawn(cluster: Cluster, command: str, **env: str) -> pexpect.spawn:
    """Run ``sh -c COMMAND`` in a new 24x80 terminal, with the cluster's environment."""
    child = pexpect.spawn("sh", ["-c", command], env=cluster.env(PS1=PROMPT, **env), dimensions=(24, 80),
                          timeout=15, cwd=str(cluster.tmp))
    child.logfile_read = (cluster.tmp / "terminal.log").open("wb")
    cluster.track(child.pid)
    return child


def saved_terminal(tmp: Path) -> str:
    """A command line that records our terminal's settings before and after ``jq``
    (and survives a Ctrl-C meant for jq, as an interactive shell does)."""
    return f"trap : INT; stty -g > {tmp}/before; {BIN}/jq -t"


def after(tmp: Path) -> str:
    return f'; echo "jq-exit=$?"; stty -g > {tmp}/after; stty -a > {tmp}/after-a'


def is_raw(child: pexpect.spawn) -> bool:
    """Whether the terminal ``child`` runs in is in raw mode (Linux: the master
    side's attributes are the terminal's)."""
    lflag = termios.tcgetattr(child.child_fd)[3]
    return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)


def descendant(pid: int, argv: list[str]) -> int | None:
    """The pid of a descendant of ``pid`` whose command line ends with ``argv``, if any
    (a script's starts with its interpreter, by whichever name its #! line gives)."""
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if proc.cmdline()[-len(argv):] == argv:
                return proc.pid
        except psutil.NoSuchProcess:
            pass
    return None


def test_interactive_shell_tty_winsize_ctrl_c_and_terminal_restored(cluster: Cluster) -> None:
    cluster.server()
    tmp = cluster.tmp
    child = spawn(cluster, saved_terminal(tmp) + " sh" + after(tmp))
    wait_for(cluster.jobs, 10, "the job to be queued")
    child.setwinsize(30, 90)  # resized while queued: the job must still get the new size
    worker = cluster.worker()
    child.expect_exact(PROMPT)
    assert is_raw(child)
    child.sendline("tty")
    child.expect(r"/dev/pts/\d+")
    child.expect_exact(PROMPT)
    child.sendline("stty size")
    child.expect_exact("30 90")
    child.expect_exact(PROMPT)

    child.setwinsize(33, 101)  # the kernel sends SIGWINCH to jq

    def resized() -> bool:
        child.sendline("stty size")
        return child.expect_exact(["33 101", "30 90"]) == 0 and child.expect_exact(PROMPT) == 0

    wait_for(resized, 10, "the new window size on the worker's terminal")

    child.sendline("trap 'echo got-int' INT; sleep 30; echo after-sleep")
    child.expect_exact("sleep 30")
    wait_for(lambda: descendant(worker.pid, ["sleep", "30"]), 10, "the remote sleep to start")
    child.send("\x03")  # Ctrl-C: a byte for the remote terminal, which signals its foreground job
    child.expect_exact("got-int", timeout=10)
    child.expect_exact("after-sleep")
    child.expect_exact(PROMPT)
    child.sendline("exit 3")
    child.expect_exact("jq-exit=3")
    child.expect(pexpect.EOF)
    assert (tmp / "before").read_text() == (tmp / "after").read_text()
    assert {"icanon", "echo", "isig"} <= set((tmp / "after-a").read_text().split())


def test_python_repl_round_trip(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    child = spawn(cluster, f"{BIN}/jq -t python3 -q; echo \"jq-exit=$?\"")
    child.expect_exact(">>> ")
    child.sendline("print(6 * 7)")
    child.expect_exact("42")
    child.expect_exact(">>> ")
    child.sendline("import sys; print(sys.stdin.isatty(), sys.stdout.isatty())")
    child.expect_exact("True True")
    child.expect_exact(">>> ")
    child.send("\x04")  # Ctrl-D: end of input on the remote terminal
    child.expect_exact("jq-exit=0")
    child.expect(pexpect.EOF)


def test_terminal_restored_when_jq_fails_is_interrupted_or_terminated(cluster: Cluster) -> None:
    tmp = cluster.tmp
    child = spawn(cluster, saved_terminal(tmp) + " --connect-timeout 0.3 sh" + after(tmp))
    child.expect_exact("jq: cannot reach the server")
    child.expect_exact("jq-exit=255")
    child.expect(pexpect.EOF)
    assert (tmp / "before").read_text() == (tmp / "after").read_text()

    cluster.server()
    child = spawn(cluster, saved_terminal(tmp) + " sh" + after(tmp))
    wait_for(cluster.jobs, 10, "the job to be queued")
    assert not is_raw(child)  # raw only once the job runs: Ctrl-C still cancels a queued job
    child.send("\x03")
    child.expect_exact("jq-exit=130")
    child.expect(pexpect.EOF)
    assert (tmp / "before").read_text() == (tmp / "after").read_text()
    wait_for(lambda: cluster.jobs() == [], 10, "the cancelled job to be gone")

    cluster.worker()
    job = ["sh", "-c", "echo ready; exec sleep 30"]
    child = spawn(cluster, saved_terminal(tmp) + " sh -c 'echo ready; exec sleep 30'" + after(tmp))
    child.expect_exact("ready")
    assert is_raw(child)
    jq_pid = wait_for(lambda: descendant(child.pid, [str(BIN / "jq"), "-t", *job]), 10,
                      "jq to run")
    os.kill(jq_pid, signal.SIGTERM)  # forwarded to the job, which ends: jq exits 143
    child.expect_exact("jq-exit=143")
    child.expect(pexpect.EOF)
    assert (tmp / "before").read_text() == (tmp / "after").read_text()
