"""What the worker core asks its shell to do (actions), and what it is told (spawn failures, its configuration).

Actions are frozen msgspec structs: a trivial job makes about eight, and a frozen
dataclass costs several times more to make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

import msgspec

from .. import config
from .. import protocol as p


class Send(msgspec.Struct, frozen=True):
    """Send this message to the server."""
    message: p.Message


class Spawn(msgspec.Struct, frozen=True):
    """Start the job's process; answer with on_spawned or on_spawn_failed before the next input.
    ``allocation`` is what the server gave it (the spec's environment already says so); the
    shell pins it to CPUs and limits its memory accordingly."""
    job_id: str
    spec: p.JobSpec
    allocation: list[p.Grant] = []


class WriteStdin(msgspec.Struct, frozen=True):
    """Write these chunks (in order, as far as the pipe takes them now) to the job's
    stdin; answer with on_stdin_accepted (even 0 bytes) or on_stdin_broken."""
    job_id: str
    chunks: tuple[memoryview, ...]


class ClosePipe(msgspec.Struct, frozen=True):
    """Close our end of the job's fd 0, 1 or 2 (``say_eof``: a terminal's stdin gets ^D first)."""
    job_id: str
    fd: int
    say_eof: bool = False


class SignalGroup(msgspec.Struct, frozen=True):
    """Send ``signum`` to the process group ``pgid`` (a job's leader is its group's leader)."""
    pgid: int
    signum: int


class SetWindowSize(msgspec.Struct, frozen=True):
    """Set the size of the job's terminal."""
    job_id: str
    rows: int
    cols: int


class Forget(msgspec.Struct, frozen=True):
    """The run is gone: close whatever fds of it are still open."""
    job_id: str


class Stage(msgspec.Struct, frozen=True):
    """jq --stage: fetch the run's tree and build its private directory; answer
    with on_staged (the directory to run in) or on_stage_failed."""
    job_id: str
    attempt: int
    spec: p.JobSpec


class Collect(msgspec.Struct, frozen=True):
    """A staged run ended: list its results to the client and send what it wants;
    answer with on_results_delivered."""
    job_id: str


class ToStager(msgspec.Struct, frozen=True):
    """A staging message of a run (Blob, Want, Ack of the results stream) for the stager."""
    message: p.Message


class Log(msgspec.Struct, frozen=True):
    """Write a log line."""
    event: str
    fields: dict[str, Any] = {}


class Exit(msgspec.Struct, frozen=True):
    """The worker is done: close the connection (what was sent still goes out) and exit."""
    status: int = 0


Action = Union[Send, Spawn, WriteStdin, ClosePipe, SignalGroup, SetWindowSize, Forget, Log, Exit, Stage, Collect,
               ToStager]


class SpawnFailure(Enum):
    NO_DIRECTORY = "no-directory"  # the job's directory does not exist
    BAD_DIRECTORY = "bad-directory"  # it exists but cannot be entered (detail: why)
    NOT_FOUND = "not-found"  # no such program on the job's PATH
    NOT_EXECUTABLE = "not-executable"  # found, but exec refused it (detail: why)
    OTHER = "other"  # anything else (detail: the error)


@dataclass(frozen=True)
class CoreConfig:
    name: str
    host: str = ""
    slots: int = 1
    tags: list[str] = field(default_factory=list)
    max_jobs: int = 0  # 0: no limit
    idle_timeout: float = 0.0  # 0: never
    kill_grace: float = config.KILL_GRACE
    # For the hello and log lines only:
    session: str = ""
    pid: int = 0
    software: str = ""
    spawn_id: str = ""
    server: str = ""
    #: Its resources, as declared (cpus, mem, gpus, named); empty: ``slots`` CPUs.
    resources: list[p.ResourcePool] = field(default_factory=list)
