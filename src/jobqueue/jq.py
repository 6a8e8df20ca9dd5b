"""``jq``: run a command line on the first ready worker as if it ran here.

This module is the terminal shell around :mod:`jobqueue.client`: it parses
the command line, forwards stdin, stdout, stderr and signals, and exits with
the job's exit code (255 for jq's own failures, as ssh does).  The terminal side (the
job's output written here, signals caught, ``-t``'s raw mode) is :mod:`jobqueue.jq_terminal`;
what only ``--stage`` needs is :mod:`jobqueue.staging.jqside`.
"""

from __future__ import annotations

# _signal is the C core of signal (the same functions and constants) without the
# enum wrappers, which cost jq about 4 ms of start-up for every job.
import _signal as signal
import gc
import os
import sys
import time

from . import config

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: jq imports nothing it does not use
    from typing import Any

    from .client import ClientJob, Session
    from .jq_terminal import Terminal
    from .wire import JobSpec

USAGE = """\
usage: jq [OPTIONS] [--] COMMAND [ARG...]

Run COMMAND on the first ready jobqueue worker, as if it ran here: stdin,
stdout and stderr are forwarded, signals are delivered to the job, and jq
exits with the job's exit code (255 for jq's own errors).

options:
  -s, --server ADDRESS     server address (HOST:PORT, tcp://..., ipc://...);
                           default $JOBQUEUE_SERVER, else localhost:3821
  -C, --chdir DIR          run in DIR on the worker (default: current directory)
  -e, --env NAME=VALUE     set a variable for the job (repeatable)
  -t, --tty                allocate a pseudo-terminal on the worker
      --tag TAG            run only on a worker with this tag (repeatable)
      --priority N         higher runs first (default 0)
      --timeout DURATION   kill the job when it runs longer (exit 124)
      --queue-timeout DURATION
                           give up if the job has not started by then (exit 255)
      --max-attempts N     give up after its worker was lost N times (default 3)
      --cpus N             needs N CPUs (default 1)
      --mem SIZE           needs SIZE of memory (512M, 16G, ...)
      --gpus N             needs N GPUs to itself (it sees them as $CUDA_VISIBLE_DEVICES)
      --resource NAME=N    needs N of the workers' resource NAME (repeatable)
      --connect-timeout DURATION
                           wait this long for the server (default 10s)
      --key FILE           this client's secret key (CURVE); $JOBQUEUE_KEY
      --server-key FILE    the server's public key; $JOBQUEUE_SERVER_KEY
      --stage DIR          send a snapshot of DIR to the worker; the job runs in
                           its copy, and what it creates or changes comes back
      --stage-git          with --stage: send .git too
      --exclude PATTERN    with --stage: leave out what matches (gitignore
                           syntax, relative to DIR; repeatable)
      --fetch PATTERN      with --stage: bring back only what matches (repeatable)
      --no-fetch           with --stage: bring nothing back
      --fetch-deletes      with --stage: delete here what the job deleted
  -v, --verbose            print the job id and where it runs on stderr
  -h, --help               show this help
  -V, --version            show the version

DURATION: seconds, or a number with ms, s, m, h or d (90, 90s, 10m, 2h).
"""

#: How long jq keeps trying when the server went away (default 10 minutes).
ENV_SERVER_GRACE = "JOBQUEUE_SERVER_GRACE"

class JqOptions:
    """jq's command line, parsed."""

    __slots__ = ("argv", "server", "chdir", "env", "tty", "tags", "priority", "timeout", "queue_timeout",
                 "max_attempts", "connect_timeout", "key", "server_key", "verbose", "resources",
                 "stage", "stage_git", "excludes", "fetch", "no_fetch", "fetch_deletes")

    def __init__(self, argv: list[str], **options: object) -> None:
        self.argv = argv
        self.server: str | None = None
        self.chdir: str | None = None
        self.env: dict[str, str] = {}
        self.tty = False
        self.tags: list[str] = []
        self.priority = 0
        self.timeout: float | None = None
        self.queue_timeout: float | None = None
        self.max_attempts = 3
        self.connect_timeout = config.CONNECT_TIMEOUT
        self.key: str | None = None
        self.server_key: str | None = None
        self.verbose = False
        #: What the job asks for (see :mod:`jobqueue.resources`): name -> amount.
        self.resources: dict[str, int] = {}
        self.stage: str | None = None
        self.stage_git = False
        self.excludes: list[str] = []
        self.fetch: list[str] = []
        self.no_fetch = False
        self.fetch_deletes = False
        for name, value in options.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"JqOptions({', '.join(f'{name}={getattr(self, name)!r}' for name in self.__slots__)})"


class Exit(Exception):
    """Leave jq now with ``code`` (after printing ``message``, if any)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_VALUED = {
    "-s": "server", "--server": "server", "-C": "chdir", "--chdir": "chdir", "-e": "env", "--env": "env",
    "--tag": "tags", "--priority": "priority", "--timeout": "timeout", "--queue-timeout": "queue_timeout",
    "--max-attempts": "max_attempts", "--connect-timeout": "connect_timeout", "--key": "key",
    "--server-key": "server_key", "--cpus": "resources", "--mem": "resources", "--gpus": "resources",
    "--resource": "resources", "--stage": "stage", "--exclude": "excludes", "--fetch": "fetch",
}
_FLAGS = {"-t": "tty", "--tty": "tty", "-v": "verbose", "--verbose": "verbose", "--stage-git": "stage_git",
          "--no-fetch": "no_fetch", "--fetch-deletes": "fetch_deletes"}


def parse_args(args: list[str]) -> JqOptions:
    """Options up to the first non-option word; the rest is the command, verbatim."""
    options = JqOptions([])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("-h", "--help"):
            raise Exit(0, USAGE)
        if name in ("-V", "--version"):
            from . import __version__

            raise Exit(0, f"jq (jobqueue) {__version__}")
        if name in _FLAGS and not eq:
            setattr(options, _FLAGS[name], True)
            i += 1
            continue
        if name not in _VALUED:
            raise config.UsageError(f"unknown option {arg!r} (see jq --help)")
        if eq:
            value = inline
        elif i + 1 < len(args):
            i += 1
            value = args[i]
        else:
            raise config.UsageError(f"option {name} needs a value (see jq --help)")
        _set_option(options, _VALUED[name], name, value)
        i += 1
    options.argv = args[i:]
    if not options.argv:
        raise config.UsageError("no command given: usage: jq [OPTIONS] [--] COMMAND [ARG...]")
    if options.stage is None and (options.stage_git or options.excludes or options.fetch or options.no_fetch
                                  or options.fetch_deletes):
        raise config.UsageError("--stage-git, --exclude, --fetch, --no-fetch and --fetch-deletes need --stage DIR")
    return options


def _set_option(options: JqOptions, key: str, name: str, value: str) -> None:
    if key == "env":
        var, eq, val = value.partition("=")
        if not eq or not var:
            raise config.UsageError(f"{name} takes NAME=VALUE, got {value!r}")
        options.env[var] = val
    elif key in ("tags", "excludes", "fetch"):
        getattr(options, key).append(value)
    elif key in ("priority", "max_attempts"):
        try:
            number = int(value)
        except ValueError:
            raise config.UsageError(f"{name} takes a whole number, got {value!r}") from None
        if key == "max_attempts" and number < 1:
            raise config.UsageError(f"{name} must be at least 1")
        setattr(options, key, number)
    elif key in ("timeout", "queue_timeout", "connect_timeout"):
        setattr(options, key, config.duration(value))
    elif key == "resources":
        from .resources import ResourceError, parse_request_option  # only jobs that ask for resources load it

        try:
            resource, amount = parse_request_option(name, value)
        except ResourceError as e:
            raise config.UsageError(str(e)) from None
        options.resources[resource] = amount
    else:
        setattr(options, key, value)


def main(args: list[str] | None = None) -> int:
    try:
        closed = config.open_missing_std_fds()
        options = parse_args(sys.argv[1:] if args is None else args)
        return run(options, closed)
    except Exit as e:
        if e.message:
            stream = sys.stdout if e.code == 0 else sys.stderr
            print(e.message if e.code == 0 else f"jq: {e.message}", file=stream)
        return e.code
    except config.UsageError as e:
        print(f"jq: {e}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:  # before our handlers were installed
        return 128 + signal.SIGINT
    except Exception as e:  # a bug: one line, never a traceback (unless JOBQUEUE_DEBUG=1)
        return config.internal_error("jq", e)


def exit_now(code: int) -> None:
    """Flush our streams and leave without the interpreter's teardown.

    By the time :func:`main` returns, jq has closed its connection, joined its
    writers and restored the terminal, so tearing down every module and object
    (about 2 ms, a seventh of a trivial job's latency) would change nothing."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the fd was closed when we started
                stream.flush()
    except (OSError, ValueError):  # e.g. stdout is a closed pipe: nothing more can reach it
        code = code or 255
    os._exit(code)


def build_spec(options: JqOptions, closed: list[int] = []) -> JobSpec:  # noqa: B006 (never mutated)
    """The job, as this process would start it: our argv, environment and directory
    as bytes, exactly, and how we stand (umask, limits, signals, stdio kinds)."""
    from . import wire as p
    from .caller import caller_attributes, caller_environment, exec_problem, same_file

    argv = [os.fsencode(arg) for arg in options.argv]  # the bytes we were given (surrogateescape)
    env = caller_environment()
    cwd = os.getcwdb()
    if options.chdir:  # as `cd DIR` would: PWD and OLDPWD follow
        chdir = os.fsencode(options.chdir)
        pwd = env.get(b"PWD", b"")
        base = pwd if pwd.startswith(b"/") else cwd
        env[b"OLDPWD"] = pwd or cwd
        env[b"PWD"] = os.path.normpath(os.path.join(base, chdir))
        cwd = os.path.join(cwd, chdir)
    for name, value in options.env.items():
        env[os.fsencode(name)] = os.fsencode(value)
    problem = exec_problem(argv, env)
    if problem:
        raise Exit(126, f"{options.argv[0]}: {problem}")
    rows = cols = 0
    if options.tty:
        try:
            cols, rows = os.get_terminal_size(0)
        except OSError:
            pass
    merge = not options.tty and 1 not in closed and 2 not in closed and same_file(1, 2)
    return p.JobSpec(
        argv=argv, env=env, cwd=cwd, tags=options.tags, priority=options.priority,
        timeout=options.timeout, tty=options.tty, rows=rows, cols=cols, max_attempts=options.max_attempts,
        stdin=options.tty or _forwards_stdin(), closed_fds=[] if options.tty else closed, merge_output=merge,
        resources=options.resources,
        **caller_attributes(),
    )


def _pipes(fds: tuple[int, ...]) -> tuple[int, ...]:
    """Those of ``fds`` that are pipes: a pipe says when its reader left (POLLERR)."""
    return tuple(fd for fd in fds if os.fstat(fd).st_mode & 0o170000 == 0o010000)


def run(options: JqOptions, closed: list[int] = []) -> int:  # noqa: B006 (never mutated)
    from .client import ClientJob, Session
    from .connection import AuthFailed, Refused, ServerLost
    from .jq_terminal import Terminal  # after the options: jq --help and --version never load it

    endpoint = config.endpoint(config.server_address(options.server))
    security = _security(options)
    term = Terminal(options)
    grace = config.env_float(ENV_SERVER_GRACE, config.SERVER_GRACE)
    spec = build_spec(options, closed)
    session = Session(endpoint, security=security, connect_timeout=options.connect_timeout, grace=grace)
    job = ClientJob(spec, term)
    if not gc.isenabled():  # bin/jq turned it off for start-up: what start-up made stays
        gc.freeze()
        gc.enable()  # before any staging: walking and hashing a tree may leave cycles to free
    if options.stage is not None:
        from .staging.jqside import stage  # only now are hashing and walking loaded

        stage(job, options, term)
    session.add(job)
    if not options.tty:
        term.watched = _pipes(tuple(fd for fd in ((1,) if spec.merge_output else (1, 2)) if fd not in closed))
    term.install(spec.ignored_signals)
    try:
        code = _loop(session, job, term, options)
    except (ServerLost, AuthFailed) as e:
        code, term.message = 255, str(e)
    except Refused as e:
        code, term.message = 255, f"the server refused: {e}"
    finally:
        if term.restore_terminal is not None:
            term.restore_terminal()
    term.flush(5.0)
    session.close()
    term.broken_fds()  # a writer's bug, if any, is reported even when the job has ended
    if term.message:
        term.note(term.message)
    return code


def _security(options: JqOptions) -> Any:
    """CURVE keys if any are given (only then is pyzmq loaded)."""
    if not (options.key or options.server_key or os.environ.get(config.ENV_KEY)
            or os.environ.get(config.ENV_SERVER_KEY)):
        return None
    from .security import client_security

    return client_security(options.key, options.server_key)


def _loop(session: Session, job: ClientJob, term: Terminal, options: JqOptions) -> int:
    now = time.monotonic()
    session.open(now)
    queue_deadline = now + options.queue_timeout if options.queue_timeout else None
    stdin_open = True  # until EOF (a job without stdin never wants any: see ClientJob.wants_stdin)
    while term.result is None:
        now = time.monotonic()
        timeout = session.conn.next_wakeup(now)
        if queue_deadline is not None:
            timeout = min(timeout, max(0.0, queue_deadline - now))
        gate_wakeup = None if term.gate is None else term.gate.next_wakeup(now)
        if gate_wakeup is not None:
            timeout = min(timeout, gate_wakeup)
        reading = stdin_open and job.running and job.wants_stdin()
        server_ready, ready = session.conn.wait([term.wake_fd, 0] if reading else [term.wake_fd], timeout,
                                                term.watched)
        now = time.monotonic()
        for fd in term.watched:
            if fd in ready:
                term.reader_left(fd)
        if term.wake_fd in ready:
            for owner, fd, end in term.drain_wakeups():
                owner.written(fd, end)
            for fd in term.broken_fds():
                job.close_output(fd)
            _forward_signals(session, job, term, now)
        if 0 in ready:
            stdin_open = _read_stdin(job)
        if server_ready:
            news = term.job_news
            session.receive(now)
            if term.job_news != news:  # the server said where the job stands, on this connection
                term.news_generation = session.conn.generation
        if queue_deadline is not None and not term.has_started and now >= queue_deadline:
            queue_deadline = None
            term.queue_timed_out = True
            _signal_job(session, job, term, signal.SIGTERM, now)
        session.flush()
        session.conn.tick(now)
        if term.gate is not None and term.result is None:
            _check_gate(session, job, term, now)
    return term.result


def _read_stdin(job: ClientJob) -> bool:
    """Read a chunk of our stdin into the job; False at EOF."""
    from . import wire as p

    try:
        data = os.read(0, p.CHUNK_SIZE)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    job.feed(data)
    return bool(data)


def _forwards_stdin() -> bool:
    """Whether our stdin goes to the job: not when it is /dev/null (fd 0 is always
    open, see config.open_missing_std_fds): the job then gets /dev/null itself and
    no stdin messages go back and forth.  A pipe is grown so one read takes a chunk."""
    st = os.fstat(0)
    kind = st.st_mode & 0o170000
    if kind == 0o020000 and st.st_rdev == os.makedev(1, 3):  # the character device 1,3
        return False
    if kind == 0o010000:  # a pipe
        import fcntl

        try:
            fcntl.fcntl(0, config.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
    return True


def _forward_signals(session: Session, job: ClientJob, term: Terminal, now: float) -> None:
    while term.signals and term.result is None:
        signum = term.signals.pop(0)
        if signum == signal.SIGWINCH:
            try:
                cols, rows = os.get_terminal_size(0)
            except OSError:
                continue
            job.resize(rows, cols)
        elif not session.conn.ever_welcomed:
            # Not connected yet: the cancel goes out with the submission; do not wait.
            job.signal(signum)
            term.result = 128 + signum
        else:
            _signal_job(session, job, term, signum, now)


def _signal_job(session: Session, job: ClientJob, term: Terminal, signum: int, now: float) -> None:
    """Deliver ``signum`` to the job through the server, unless the server may never
    pass it on (see :mod:`jobqueue.jq_signals`)."""
    if term.gate is None:
        from .jq_signals import SignalGate  # on the first signal: a plain job never loads it

        term.gate = SignalGate(session.conn.heartbeat, term.job_news)
    conn = session.conn
    _act(session, job, term, term.gate.on_signal(signum, now, up=conn.welcomed, generation=conn.generation,
                                                 running=job.running,
                                                 attached=term.news_generation == conn.generation))


def _check_gate(session: Session, job: ClientJob, term: Terminal, now: float) -> None:
    conn = session.conn
    action = term.gate.poll(now, up=conn.welcomed, generation=conn.generation, last_heard=conn.answered_at,
                            running=job.running, news=term.job_news,
                            attached=term.news_generation == conn.generation)
    if action is not None:
        _act(session, job, term, action)
        session.flush()


def _act(session: Session, job: ClientJob, term: Terminal, action: tuple[str, int]) -> None:
    from .jq_signals import DETACHED, FORWARD, HOLD, signal_name

    kind, signum = action
    server, name = f"the server at {session.conn.endpoint}", signal_name(signum)
    if kind == FORWARD:
        job.signal(signum)
        session.flush()
        session.conn.ping()  # its Pong, after the signal, says the server has it
    elif kind == HOLD:
        term.note(f"{server} does not answer; {name} goes to job {job.job_id} once it is back "
                  "(signal jq again to abandon the job)")
    elif kind == DETACHED:
        term.note(f"{server} has not re-attached job {job.job_id} yet; {name} goes to it once it has "
                  "(signal jq again to abandon the job)")
    elif term.queue_timed_out and not job.running:
        term.result = 255
        term.message = (f"job {job.job_id} did not start within {term.options.queue_timeout:g}s "
                        f"(--queue-timeout) and {server} does not answer; abandoned it")
    elif not job.running:
        term.result = 128 + signum
        term.message = f"{server} does not answer; job {job.job_id} abandoned on {name} before it started"
    elif term.gate.detached:
        term.result = 128 + signum
        term.message = (f"job {job.job_id} abandoned on {name} before {server} re-attached it; "
                        "it is stopped when its worker is back")
    else:
        term.result = 128 + signum
        term.message = (f"{server} does not answer; job {job.job_id} abandoned on {name}; it is stopped "
                        "when the server is back (or its worker gives up on the server)")
