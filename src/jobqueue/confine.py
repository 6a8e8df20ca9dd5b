"""The worker's resources as the system sees them: what the machine has (GPUs,
memory), which CPUs a job is pinned to (``--bind-cpus``) and the memory cgroup
that holds a job to its ``--mem`` (``--enforce-mem``).

Everything here touches the system (files under /proc and /sys/fs/cgroup,
``nvidia-smi``, the scheduler's affinity); the decisions are in
:mod:`jobqueue.resources`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from .resources import CPUS, MEM, Allocation, gpus_from_nvidia_smi, gpus_from_visible_devices


class ConfineError(Exception):
    """The worker cannot do what an option asks on this machine; the message says why."""


# --- what the machine has --------------------------------------------------------------------


def detect_gpus(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """``--gpus auto``: the GPUs the worker was given (``$CUDA_VISIBLE_DEVICES``, e.g. by Slurm),
    else those ``nvidia-smi -L`` lists, else none."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return gpus_from_visible_devices(visible)
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return gpus_from_nvidia_smi(listing.stdout) if listing.returncode == 0 else ()


def machine_memory() -> int:
    """Bytes of physical memory (the default of ``--mem``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- CPU pinning ---------------------------------------------------------------------------------


class CpuPinning:
    """Which CPUs each running job is pinned to: distinct ones, the lowest free first."""

    def __init__(self, allowed: set[int], wanted: int) -> None:
        if wanted > len(allowed):
            raise ConfineError(f"--bind-cpus: --cpus {wanted} is more than the {len(allowed)} CPUs this worker "
                               "may use; lower --cpus or drop --bind-cpus")
        self.free = sorted(allowed)[:wanted]
        self.held: dict[str, list[int]] = {}

    def take(self, key: str, count: int) -> list[int]:
        cpus, self.free = self.free[:count], self.free[count:]
        self.held[key] = cpus
        return cpus

    def release(self, key: str) -> None:
        self.free = sorted(self.free + self.held.pop(key, []))


@contextlib.contextmanager
def affinity(cpus: list[int] | None) -> Iterator[None]:
    """Run the body (a spawn) with this thread pinned to ``cpus``: the child inherits it."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- memory cgroups ------------------------------------------------------------------------------


class MemoryCgroups:
    """Per-job memory cgroups under the worker's own cgroup.

    cgroup v2: the worker's cgroup must be its own (a delegated cgroup, e.g.
    ``systemd-run --scope -p Delegate=yes``, or a container's): the worker moves
    itself into a leaf (``worker``) so that the memory controller can be enabled
    for the job cgroups beside it.  cgroup v1 (the memory hierarchy): job
    cgroups are created under the worker's.  A job is put in its cgroup by
    spawning it from a thread that is in it for that instant."""

    def __init__(self, base: Path, version: int) -> None:
        self.base = base
        self.version = version
        self.home = base / "worker" if version == 2 else base
        self._seq = 0

    @classmethod
    def setup(cls, proc: Path = Path("/proc/self")) -> MemoryCgroups:
        """Find and prepare the worker's cgroup, or raise :class:`ConfineError` saying why not."""
        refusal = "--enforce-mem needs a memory cgroup the worker may create cgroups in"
        mounts = _cgroup_mounts(proc / "mountinfo")
        lines = _read(proc / "cgroup").splitlines()
        v1 = v2 = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[0] == "0" and not parts[1]:
                v2 = parts[2]
            elif len(parts) == 3 and "memory" in parts[1].split(","):
                v1 = parts[2]
        problems = []
        if v2 is not None and "cgroup2" in mounts:
            base = mounts["cgroup2"] / v2.lstrip("/")
            try:
                return cls._setup_v2(base)
            except OSError as e:
                problems.append(f"cgroup v2 at {base}: {e.strerror or e}")
            except ConfineError as e:
                problems.append(str(e))
        if v1 is not None and "memory" in mounts:
            base = mounts["memory"] / v1.lstrip("/")
            try:
                return cls._setup_v1(base)
            except OSError as e:
                problems.append(f"cgroup v1 memory at {base}: {e.strerror or e}")
        if not problems:
            problems.append("no cgroup file system with the memory controller is mounted")
        raise ConfineError(f"{refusal}: {'; '.join(problems)}")

    @classmethod
    def _setup_v2(cls, base: Path) -> MemoryCgroups:
        if "memory" not in _read(base / "cgroup.controllers").split():
            raise ConfineError(f"cgroup v2 at {base}: the memory controller is not delegated to this cgroup")
        subtree = _read(base / "cgroup.subtree_control").split()
        if "memory" not in subtree:
            others = [pid for pid in _read(base / "cgroup.procs").split() if int(pid) != os.getpid()]
            if others:
                raise ConfineError(f"cgroup v2 at {base}: it holds other processes too; run the worker in a cgroup "
                                   "of its own (e.g. systemd-run --scope -p Delegate=yes jobqueue-worker ...)")
            leaf = base / "worker"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (base / "cgroup.subtree_control").write_text("+memory")
        limits = cls(base, 2)
        limits._probe()
        return limits

    @classmethod
    def _setup_v1(cls, base: Path) -> MemoryCgroups:
        limits = cls(base, 1)
        limits._probe()
        return limits

    def _probe(self) -> None:
        """Create and remove a job cgroup: the worker may do it (else OSError)."""
        probe = self.create(f"probe-{os.getpid()}", 1 << 30)
        self.remove(probe)

    def create(self, key: str, limit: int) -> Path:
        self._seq += 1
        path = self.base / f"job-{os.getpid()}-{self._seq}-{_safe(key)}"
        path.mkdir()
        if self.version == 2:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to limit
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        return path

    @contextlib.contextmanager
    def inside(self, path: Path | None) -> Iterator[None]:
        """Run the body (a spawn) with this thread in the cgroup ``path``: the child starts there."""
        if path is None:
            yield
            return
        members = "cgroup.procs" if self.version == 2 else "tasks"
        me = str(os.getpid() if self.version == 2 else _thread_id())
        (path / members).write_text(me)
        try:
            yield
        finally:
            (self.home / members).write_text(me)

    def oom_killed(self, path: Path) -> bool:
        """Whether the kernel killed a process of this cgroup for exceeding its limit."""
        events = _read(path / ("memory.events" if self.version == 2 else "memory.oom_control"))
        for line in events.splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def remove(self, path: Path) -> bool:
        """Remove a job's cgroup once it is empty (False: processes still in it)."""
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


def _cgroup_mounts(mountinfo: Path) -> dict[str, Path]:
    """``cgroup2`` and each v1 controller -> where its hierarchy is mounted."""
    found: dict[str, Path] = {}
    for line in _read(mountinfo).splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        point, fstype = Path(fields[4]), rest[0]
        if fstype == "cgroup2":
            found.setdefault("cgroup2", point)
        elif fstype == "cgroup":
            for option in rest[2].split(","):
                found.setdefault(option, point)
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)[:40]


def _thread_id() -> int:
    import threading

    return threading.get_native_id()


# --- one worker's jobs -----------------------------------------------------------------------------


class Placement:
    """Where one job runs: its CPUs, its memory cgroup (and its limit)."""

    def __init__(self, cpus: list[int] | None, cgroup: Path | None, mem: int) -> None:
        self.cpus, self.cgroup, self.mem = cpus, cgroup, mem


class Confinement:
    """What a worker's shell does with what the server gave each job: pins it
    (``--bind-cpus``), limits its memory (``--enforce-mem``).  (What the job is
    told, its environment, the worker core decides: :func:`jobqueue.resources.job_env`.)

    Built at the worker's start, so that an option the machine cannot honour is
    refused then, with a clear message (:class:`ConfineError`)."""

    def __init__(self, cpus: int, *, bind_cpus: bool = False, enforce_mem: bool = False) -> None:
        self.pinning = CpuPinning(os.sched_getaffinity(0), cpus) if bind_cpus else None
        self.cgroups = MemoryCgroups.setup() if enforce_mem else None
        self.placed: dict[str, Placement] = {}
        #: Cgroups of ended jobs not removed yet (a process of the job was still in it).
        self.leftover: list[Path] = []

    @property
    def active(self) -> bool:
        """Whether jobs are pinned or limited at all (else spawning skips it: per-job cost)."""
        return self.pinning is not None or self.cgroups is not None

    def place(self, key: str, allocation: Allocation) -> Placement:
        """Decide where the job ``key`` runs: its CPUs and its cgroup."""
        amounts = {name: amount for name, amount, _ in allocation}
        cpus = self.pinning.take(key, amounts.get(CPUS, 1)) if self.pinning is not None else None
        mem = amounts.get(MEM, 0)
        cgroup = None
        if self.cgroups is not None:
            # A job that asked for no memory is not limited: it gets none of the worker's counted.
            cgroup = self.cgroups.create(key, mem) if mem else None
        placement = self.placed[key] = Placement(cpus, cgroup, mem)
        return placement

    @contextlib.contextmanager
    def spawning(self, key: str) -> Iterator[None]:
        """Around the spawn of job ``key``: the child starts on its CPUs, in its cgroup."""
        placement = self.placed.get(key)
        if placement is None:
            yield
            return
        with affinity(placement.cpus):
            if self.cgroups is not None:
                with self.cgroups.inside(placement.cgroup):
                    yield
            else:
                yield

    def out_of_memory(self, key: str) -> int:
        """The job's memory limit if the kernel killed it for going past it, else 0."""
        placement = self.placed.get(key)
        if placement is None or placement.cgroup is None or self.cgroups is None:
            return 0
        return placement.mem if self.cgroups.oom_killed(placement.cgroup) else 0

    def release(self, key: str) -> None:
        """The job is over: free its CPUs, remove its cgroup (later if it is not empty yet)."""
        placement = self.placed.pop(key, None)
        if self.pinning is not None:
            self.pinning.release(key)
        if placement is not None and placement.cgroup is not None:
            self.leftover.append(placement.cgroup)
        if self.cgroups is not None:
            cgroups = self.cgroups
            self.leftover = [path for path in self.leftover if not cgroups.remove(path)]
