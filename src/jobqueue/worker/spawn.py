"""Starting a job's process: ``posix_spawn`` with pipes, or ``Popen`` with a pseudo-terminal."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
from typing import Any

from .. import config
from .. import protocol as p
from .actions import SpawnFailure

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", config.F_SETPIPE_SZ)


class Started:
    """A job's process and our ends of its stdio (fd 0/1/2 -> our fd; non-blocking)."""

    def __init__(self, pid: int, fds: dict[int, int], proc: subprocess.Popen[bytes] | None = None) -> None:
        self.pid, self.fds, self.proc = pid, fds, proc


class Spawner:
    def __init__(self) -> None:
        #: Where we return after starting a job in its directory (see _spawn_pipes).
        self.home = os.open(".", os.O_PATH | os.O_DIRECTORY)
        self.ignored_signals: list[int] = []  # set once the worker's handlers are installed
        #: Where each program was found, per PATH, as a shell's command hash remembers it.
        self.programs: dict[tuple[str, str, str], str] = {}

    def start(self, spec: p.JobSpec) -> Started | tuple[SpawnFailure, str]:
        """Start the job's process, or say why it could not start."""
        try:
            started = self._spawn_tty(spec) if spec.tty else self._spawn_pipes(spec)
        except NoDirectory as e:
            if e.errno == errno.ENOENT:
                return SpawnFailure.NO_DIRECTORY, ""
            return SpawnFailure.BAD_DIRECTORY, e.strerror or ""
        except FileNotFoundError:
            return SpawnFailure.NOT_FOUND, ""
        except PermissionError:
            return SpawnFailure.NOT_EXECUTABLE, "permission denied"
        except OSError as e:
            return SpawnFailure.NOT_EXECUTABLE, e.strerror or str(e)
        except (ValueError, TypeError) as e:
            return SpawnFailure.OTHER, str(e)
        for fd in started.fds.values():
            os.set_blocking(fd, False)
            if not spec.tty:
                _grow_pipe(fd)
        return started

    def _spawn_pipes(self, spec: p.JobSpec) -> Started:
        """posix_spawn (a vfork) rather than Popen: a third of the worker's time per
        trivial job.  It has no working directory of its own, so the worker
        enters the job's for the instant of the spawn (it runs no other thread
        that resolves relative paths)."""
        ours: list[int] = []  # our ends of the job's pipes
        theirs: list[int] = []  # the job's ends (closed here once it has them)
        actions: list[tuple[Any, ...]] = []
        try:
            if spec.stdin:
                read_end, write_end = os.pipe()
                ours.append(write_end)
                theirs.append(read_end)
                actions.append((os.POSIX_SPAWN_DUP2, read_end, 0))
            else:
                actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
            for target in (1, 2):
                read_end, write_end = os.pipe()
                ours.append(read_end)
                theirs.append(write_end)
                actions.append((os.POSIX_SPAWN_DUP2, write_end, target))
            _enter(spec.cwd)
            try:
                pid = self._spawn_program(spec, actions)
            finally:
                os.fchdir(self.home)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        which = ([p.STDIN] if spec.stdin else []) + [p.STDOUT, p.STDERR]
        return Started(pid, dict(zip(which, ours)))

    def _spawn_program(self, spec: p.JobSpec, actions: list[tuple[Any, ...]]) -> int:
        """posix_spawn the job's program, found on its PATH (remembered per PATH and
        directory; looked up again if it has gone)."""
        name = spec.argv[0]
        key = (spec.env.get("PATH", ""), spec.cwd, name)
        for attempt in (1, 2):
            cached = self.programs.get(key) if attempt == 1 else None
            program = cached or _find_program(name, spec.env)
            try:
                pid = os.posix_spawn(program, spec.argv, spec.env, file_actions=actions, setsid=True,
                                     setsigdef=self.ignored_signals)
            except FileNotFoundError:
                if cached is None:
                    raise
                del self.programs[key]
                continue
            if "/" not in name:
                if len(self.programs) > 1000:
                    self.programs.clear()
                self.programs[key] = program
            return pid
        raise AssertionError("unreachable")

    def _spawn_tty(self, spec: p.JobSpec) -> Started:
        if not os.path.isdir(spec.cwd):
            raise NoDirectory(errno.ENOENT, os.strerror(errno.ENOENT))
        master, slave = os.openpty()
        if spec.rows and spec.cols:
            set_winsize(master, spec.rows, spec.cols)
        try:
            proc = subprocess.Popen(
                spec.argv, cwd=spec.cwd, env=spec.env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=_take_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        # The terminal is one stream, read as stdout; stdin writes to a duplicate so
        # that each can be closed on its own.
        return Started(proc.pid, {p.STDIN: os.dup(master), p.STDOUT: master}, proc)


def ignored_signals() -> list[int]:
    """The signals this process ignores: what Python ignores (SIGPIPE, SIGXFSZ) and
    what the worker's launcher made it ignore (a background shell job ignores
    SIGINT and SIGQUIT, nohup SIGHUP).  A job gets them back at their default
    action (handlers the worker installed are reset by exec itself)."""
    ignored: list[int] = []
    for signum in signal.valid_signals():
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                ignored.append(int(signum))
        except (ValueError, OSError):
            pass
    return ignored


class NoDirectory(OSError):
    """The job's working directory cannot be entered."""


def _enter(directory: str) -> None:
    try:
        os.chdir(directory)
    except OSError as e:
        raise NoDirectory(e.errno, e.strerror) from None


def _find_program(name: str, env: dict[str, str]) -> str:
    """The file that ``execvp`` would run for ``name``, searching the job's own
    PATH (from the job's directory, where relative entries and names start)."""
    if "/" in name:
        return name
    candidates = [os.path.join(directory, name) for directory in os.get_exec_path(env)]
    for path in candidates:  # one system call per directory that lacks it
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    if any(os.path.exists(path) for path in candidates):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def no_inheritable_fds() -> None:
    """Mark every fd above stderr close-on-exec: posix_spawn passes a job every fd
    that is not (Popen closed them all), and we may have inherited some."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, closed by now


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe lets one read take a whole chunk: fewer, larger messages."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: keep the default


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except (OSError, struct.error):
        pass
