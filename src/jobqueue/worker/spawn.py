"""Starting a job's process: ``posix_spawn`` with pipes, or ``Popen`` with a pseudo-terminal."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import termios
from dataclasses import replace

from .. import config, launch
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
        #: What a spawned process inherits from us (read again once the worker's handlers are installed).
        self.own = launch.own_state()
        #: Where each program was found, per PATH, as a shell's command hash remembers it.
        self.programs: dict[tuple[bytes, bytes, bytes], str] = {}
        self.plans: dict[tuple[object, ...], launch.Plan] = {}
        #: prlimit, nice and env --ignore-signal, looked for when a job first needs one.
        self._helpers: launch.Helpers | None = None

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
        except (ValueError, TypeError, subprocess.SubprocessError) as e:  # e.g. a failing child set-up
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
        that resolves relative paths).  The job's fds, umask, signals and limits
        are its caller's (:mod:`jobqueue.launch`)."""
        plan = self._plan(spec)
        ours: dict[int, int] = {}  # our ends of the job's pipes, by the job's fd
        theirs: dict[int, int] = {}  # the job's ends (closed here once it has them)
        try:
            for fd, wanted in enumerate(launch.job_pipes(spec)):
                if wanted:
                    read_end, write_end = os.pipe()
                    ours[fd], theirs[fd] = (write_end, read_end) if fd == 0 else (read_end, write_end)
            if plan.merge_output:
                theirs[2] = theirs[1]
            _enter(spec.cwd)
            try:
                pid, proc = self._spawn_program(spec, plan, theirs)
            finally:
                os.fchdir(self.home)
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        finally:
            for fd in set(theirs.values()):
                os.close(fd)
        return Started(pid, ours, proc)

    def refresh_own(self) -> None:
        """Read our own attributes again (once our signal handlers are installed)."""
        self.own = launch.own_state()
        self.plans.clear()

    def _plan(self, spec: p.JobSpec) -> launch.Plan:
        """launch.plan, remembered per caller attributes: the jobs of one client (an
        Executor's thousands) all stand alike, and planning costs more than the lookup."""
        key = (spec.umask, spec.nice, spec.merge_output, tuple(spec.rlimits), tuple(spec.ignored_signals),
               tuple(spec.blocked_signals), tuple(spec.closed_fds))
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) > 100:
                self.plans.clear()
            plan = self.plans[key] = launch.plan(spec, self.own)
        return plan

    def _spawn_program(self, spec: p.JobSpec, plan: launch.Plan,
                       fds: dict[int, int]) -> tuple[int, subprocess.Popen[bytes] | None]:
        """Start the job's program, found on its PATH (remembered per PATH and
        directory; looked up again if it has gone): posix_spawn, behind the helpers
        that set what it cannot (limits, nice, ignored signals: launch.helper_argv), or
        Popen (a fork) where one of those is missing."""
        name = spec.argv[0]
        key = (spec.env.get(b"PATH", b""), spec.cwd, name)
        for attempt in (1, 2):
            cached = self.programs.get(key) if attempt == 1 else None
            program = cached or launch.find_program(name, spec.env)
            if plan.umask is not None:
                os.umask(plan.umask)  # inherited; no thread of ours creates files meanwhile
            try:
                argv = launch.helper_argv(plan, self.own.nice, self.helpers(), spec.argv) if plan.needs_fork \
                    else spec.argv
                if argv is None:  # a helper it needs is missing
                    proc = self._fork_program(program, spec, plan, fds)
                    pid = proc.pid
                else:
                    helped = argv is not spec.argv
                    if helped and cached is not None and not os.access(program, os.X_OK):
                        raise FileNotFoundError(program)  # gone since: look again (the helper would just fail)
                    proc = None
                    actions = launch.spawn_file_actions(plan, fds.get(0), fds.get(1, -1), fds.get(2, -1))
                    pid = os.posix_spawn(os.fsdecode(argv[0]) if helped else program, argv, spec.env,
                                         file_actions=actions, setsid=True, setsigdef=plan.sigdef,
                                         setsigmask=plan.sigmask)
            except FileNotFoundError:
                if cached is None:
                    raise
                del self.programs[key]
                continue
            finally:
                if plan.umask is not None:
                    os.umask(self.own.umask)
            if b"/" not in name:
                if len(self.programs) > 1000:
                    self.programs.clear()
                self.programs[key] = program
            return pid, proc
        raise AssertionError("unreachable")

    def helpers(self) -> launch.Helpers:
        """The worker's prlimit, nice and env (if its env has --ignore-signal), found on
        its PATH once."""
        if self._helpers is None:
            path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
            env = shutil.which("env", path=path)
            if env is not None and not _succeeds([env, "--ignore-signal=10", "--version"]):
                env = None  # before coreutils 8.31
            self._helpers = launch.Helpers(shutil.which("prlimit", path=path), shutil.which("nice", path=path), env)
        return self._helpers

    def _fork_program(self, program: str, spec: p.JobSpec, plan: launch.Plan,
                      fds: dict[int, int]) -> subprocess.Popen[bytes]:
        """Popen: fork, then :func:`launch.child_setup`, then exec (reaped by the shell)."""
        devnull = subprocess.DEVNULL if 0 not in plan.closed else None  # None: closed by child_setup
        return subprocess.Popen(
            spec.argv, executable=program, env=spec.env, stdin=fds.get(0, devnull), stdout=fds.get(1),
            stderr=fds.get(2), start_new_session=True, restore_signals=False, preexec_fn=launch.child_setup(plan),
        )

    def _spawn_tty(self, spec: p.JobSpec) -> Started:
        if not os.path.isdir(spec.cwd):
            raise NoDirectory(errno.ENOENT, os.strerror(errno.ENOENT))
        master, slave = os.openpty()
        if spec.rows and spec.cols:
            set_winsize(master, spec.rows, spec.cols)
        plan = replace(launch.plan(spec, self.own), closed=())
        try:
            proc = subprocess.Popen(
                spec.argv, cwd=spec.cwd, env=spec.env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, restore_signals=False, umask=-1 if plan.umask is None else plan.umask,
                preexec_fn=launch.child_setup(plan, _take_controlling_tty),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        # The terminal is one stream, read as stdout; stdin writes to a duplicate so
        # that each can be closed on its own.
        return Started(proc.pid, {p.STDIN: os.dup(master), p.STDOUT: master}, proc)


class NoDirectory(OSError):
    """The job's working directory cannot be entered."""


def _enter(directory: bytes) -> None:
    try:
        os.chdir(directory)
    except OSError as e:
        raise NoDirectory(e.errno, e.strerror) from None


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


def _succeeds(argv: list[str]) -> bool:
    """Whether a command exits 0 (its stdio /dev/null)."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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
