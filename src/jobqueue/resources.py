"""Resources: what a worker has, what a job asks for, and how jobs are fitted (pure).

A worker declares *pools*: ``cpus`` (a sum), ``mem`` (a sum, in bytes), ``gpus``
(indexed: each GPU is a distinct item, e.g. ``0,1,2,3``) and named resources,
either sums (``licence=3``) or indexed items (``fpga=a,b``).  A job asks for an
amount of some pools (``cpus=8 mem=16G gpus=1``); a job that asks for nothing
asks for one CPU, which makes ``jobqueue-worker -j N`` the counting semaphore
it always was.  A job runs only where *everything* it asks for is free at once,
and holds it until it ends: of an indexed pool it holds distinct items, which
the worker tells it (``CUDA_VISIBLE_DEVICES``).

No sockets, files or clock here: parsing, fitting, allocating, releasing and
the "why does it wait" texts.  This module must stay cheap to import: ``jq``
loads it when given a resource option.
"""

from __future__ import annotations

CPUS, MEM, GPUS = "cpus", "mem", "gpus"

#: A job's request, normalised: sorted ``(name, amount)`` pairs, amounts > 0, always with cpus.
Request = tuple[tuple[str, int], ...]
#: What a job was given: ``(name, amount, items)`` per pool (items empty for a sum).
Allocation = tuple[tuple[str, int, tuple[str, ...]], ...]

DEFAULT_REQUEST: Request = ((CPUS, 1),)
#: How long jobs that fit may overtake one that does not before a worker is held for it (seconds).
RESERVE_AFTER = 30.0
MAX_NAME = 64
MAX_POOLS = 64
MAX_ITEMS = 1024

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


class ResourceError(ValueError):
    """A resource declaration or request that does not parse; the message says why."""


# --- parsing -------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``16G``, ``512M``, ``1.5G``, ``64GiB``, ``1024`` (bytes) -> bytes; units are powers of 1024."""
    raw = text.strip()
    number = raw.upper().removesuffix("IB").removesuffix("B") if raw[-1:].isalpha() else raw
    unit = number[-1:] if number[-1:].isalpha() else ""
    digits = number[:-1] if unit else number
    if unit not in _UNITS or not digits or not all(c.isdigit() or c == "." for c in digits) or digits.count(".") > 1:
        raise ResourceError(f"bad size {text!r}: use a number of bytes or a number with K, M, G, T or P "
                            "(e.g. 512M, 16G, 1.5T)")
    return int(float(digits) * _UNITS[unit])


def format_size(n: int) -> str:
    """Bytes as the shortest exact ``16G``-style text (else with one decimal)."""
    for unit in ("P", "T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            value = n / _UNITS[unit]
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(n)


def format_amount(name: str, amount: int) -> str:
    return format_size(amount) if name == MEM else str(amount)


def check_name(name: str, where: str) -> str:
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "_-." for c in name) \
            or not name[0].isalpha():
        raise ResourceError(f"{where}: a resource name is a letter then letters, digits, '_', '-' or '.' "
                            f"(at most {MAX_NAME}), got {name!r}")
    return name


def _count(text: str, what: str, minimum: int = 0) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ResourceError(f"{what} takes a whole number, got {text!r}") from None
    if value < minimum:
        raise ResourceError(f"{what} must be at least {minimum}, got {value}")
    return value


# --- worker side: pools --------------------------------------------------------------------


class Pool:
    """One resource of a worker: a sum (``items`` empty) or distinct items."""

    __slots__ = ("name", "total", "items")

    def __init__(self, name: str, total: int, items: tuple[str, ...] = ()) -> None:
        self.name, self.total, self.items = name, len(items) if items else total, items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pool) and (self.name, self.total, self.items) == (other.name, other.total,
                                                                                    other.items)

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {self.total}, {self.items!r})"

    def describe(self) -> str:
        if self.items:
            return f"{self.name}={','.join(self.items)}"
        return f"{self.name}={format_amount(self.name, self.total)}"


def _items(text: str, what: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    if not all(items) or len(set(items)) != len(items) or len(items) > MAX_ITEMS:
        raise ResourceError(f"{what}: items must be distinct, non-empty and at most {MAX_ITEMS}, got {text!r}")
    return items


def parse_declaration(text: str) -> Pool:
    """``--resource NAME=COUNT`` (a sum) or ``NAME=a,b,c`` (indexed items)."""
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not value.strip():
        raise ResourceError(f"--resource takes NAME=COUNT or NAME=ITEM,ITEM,..., got {text!r}")
    check_name(name, "--resource")
    value = value.strip()
    if name == MEM:
        return Pool(MEM, parse_size(value))
    if value.isdigit() and name != GPUS:
        return Pool(name, int(value))
    if name == GPUS:
        return parse_gpus(value, lambda: ())
    return Pool(name, 0, _items(value, f"--resource {name}"))


def parse_gpus(text: str, detect: object) -> Pool:
    """``--gpus auto`` (``detect()`` returns the indices), ``--gpus 0,1,2,3`` or ``--gpus N`` (0..N-1)."""
    value = text.strip()
    if value == "auto":
        found = tuple(detect())  # type: ignore[operator]
        return Pool(GPUS, 0, found)
    if value.isdigit():
        return Pool(GPUS, 0, tuple(str(i) for i in range(int(value))))
    if value.startswith("-"):
        raise ResourceError(f"--gpus takes auto, a number or a list of indices, got {text!r}")
    return Pool(GPUS, 0, _items(value, "--gpus"))


def gpus_from_nvidia_smi(output: str) -> tuple[str, ...]:
    """The indices in ``nvidia-smi -L`` output (``GPU 0: NVIDIA A100 (UUID: ...)``)."""
    found = []
    for line in output.splitlines():
        head, colon, _ = line.partition(":")
        if colon and head.startswith("GPU ") and head[4:].strip().isdigit():
            found.append(head[4:].strip())
    return tuple(found)


def gpus_from_visible_devices(value: str) -> tuple[str, ...]:
    """``$CUDA_VISIBLE_DEVICES`` as items (empty, or ``-1``/``NoDevFiles``: none)."""
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    return () if not items or items[0] in ("-1", "NoDevFiles") else items


def worker_pools(cpus: int, mem: int, gpus: Pool | None, declared: list[Pool]) -> list[Pool]:
    """A worker's pools: cpus and mem always, gpus if any, then the named ones (a name once)."""
    pools = {CPUS: Pool(CPUS, cpus), MEM: Pool(MEM, mem)}
    if gpus is not None and gpus.total:
        pools[GPUS] = gpus
    for pool in declared:
        if pool.name in pools and pool.name not in (CPUS, MEM):
            raise ResourceError(f"resource {pool.name} is declared twice")
        pools[pool.name] = pool
    if len(pools) > MAX_POOLS:
        raise ResourceError(f"at most {MAX_POOLS} resources per worker")
    return list(pools.values())


# --- job side: requests --------------------------------------------------------------------


def parse_request_option(option: str, value: str) -> tuple[str, int]:
    """One of jq's ``--cpus N``, ``--mem SIZE``, ``--gpus N``, ``--resource NAME=N`` as (name, amount)."""
    if option == "--cpus":
        return CPUS, _count(value, "--cpus", 1)
    if option == "--mem":
        try:
            return MEM, parse_size(value)
        except ResourceError as e:
            raise ResourceError(f"--mem: {e}") from None
    if option == "--gpus":
        return GPUS, _count(value, "--gpus")
    name, eq, amount = value.partition("=")
    if not eq:
        raise ResourceError(f"--resource takes NAME=COUNT, got {value!r}")
    name = check_name(name.strip(), "--resource")
    if name == MEM:
        return MEM, parse_size(amount)
    return name, _count(amount, f"--resource {name}", 1 if name == CPUS else 0)


def request_of(cpus: int | None = None, mem: int | str | None = None, gpus: int | None = None,
               resources: dict[str, int] | None = None) -> dict[str, int]:
    """The API's keyword arguments as a job's request (raises :class:`ResourceError`)."""
    request: dict[str, int] = {}
    for name, amount in (resources or {}).items():
        check_name(name, "resources")
        request[name] = parse_size(amount) if name == MEM and isinstance(amount, str) else amount
    if cpus is not None:
        request[CPUS] = cpus
    if mem is not None:
        request[MEM] = parse_size(mem) if isinstance(mem, str) else mem
    if gpus is not None:
        request[GPUS] = gpus
    for name, amount in request.items():
        if type(amount) is not int:
            raise ResourceError(f"{name} takes a whole number, got {amount!r}")
    problem = request_problem(request)
    if problem:
        raise ResourceError(problem)
    return request


def request_problem(resources: dict[str, int]) -> str:
    """Why a job's requested resources are invalid ('' if fine)."""
    if len(resources) > MAX_POOLS:
        return f"at most {MAX_POOLS} resources per job"
    for name, amount in resources.items():
        try:
            check_name(name, "resources")
        except ResourceError as e:
            return str(e)
        if amount < 0 or amount >= 1 << 62:
            return f"{name} must be at least 0, got {amount}"
        if name == CPUS and amount < 1:
            return "a job asks for at least 1 CPU"
    return ""


_interned: dict[Request, Request] = {}


def normalise(resources: dict[str, int]) -> Request:
    """A job's request as a shared tuple (one per distinct request: a queued job costs a pointer)."""
    if not resources:
        return DEFAULT_REQUEST
    pairs = {CPUS: 1, **{n: a for n, a in resources.items() if a > 0}}
    request = tuple(sorted(pairs.items()))
    if len(_interned) > 10_000:
        _interned.clear()
    return _interned.setdefault(request, request)


def describe(request: Request) -> str:
    """``cpus=2 gpus=1 mem=16G`` (the default single CPU left out when there is more)."""
    shown = [(n, a) for n, a in request if not (n == CPUS and a == 1 and len(request) > 1)]
    return " ".join(f"{n}={format_amount(n, a)}" for n, a in shown)


def allocation_env(allocation: Allocation) -> dict[str, str]:
    """What a job is told of what it got (the worker adds these to its environment)."""
    env: dict[str, str] = {}
    for name, amount, items in allocation:
        value = ",".join(items) if items else str(amount)
        if name == GPUS:
            env["CUDA_VISIBLE_DEVICES"] = env["JOBQUEUE_GPUS"] = value
        elif name == CPUS:
            env["JOBQUEUE_CPUS"] = value
        elif name == MEM:
            env["JOBQUEUE_MEM"] = value
        env["JOBQUEUE_RESOURCE_" + "".join(c if c.isalnum() else "_" for c in name.upper())] = value
    return env


def job_env(allocation: Allocation, env: dict[bytes, bytes], *, asked: bool = True,
            has_gpus: bool = False) -> dict[bytes, bytes]:
    """The variables a job with ``allocation`` gets on top of its own ``env`` (bytes, as a
    spec's): what it got, and ``OMP_NUM_THREADS`` as many as its CPUs unless its
    environment (jq's) sets it.  A job that ``asked`` for nothing gets none of them: its
    environment stays exactly jq's (README "What a job sees").  But on a worker that hands
    out GPUs (``has_gpus``) a job without any sees none of them, not all."""
    told = allocation_env(allocation) if asked else {}
    if has_gpus and "JOBQUEUE_GPUS" not in told:
        told["CUDA_VISIBLE_DEVICES"] = ""
    if asked:
        told.setdefault("JOBQUEUE_CPUS", "1")
        if b"OMP_NUM_THREADS" not in env:
            told["OMP_NUM_THREADS"] = told["JOBQUEUE_CPUS"]
    return {name.encode(): value.encode() for name, value in told.items()}


# --- fitting: a worker's holdings ----------------------------------------------------------


class Holdings:
    """What one worker has and what its running jobs hold.

    ``free`` is the amount free per pool (for an indexed pool, the number of
    free items), so fitting a request is a few dict look-ups."""

    __slots__ = ("pools", "total", "free", "free_items", "held", "slots")

    def __init__(self, pools: list[Pool], slots: int) -> None:
        self.pools = {pool.name: pool for pool in pools}
        self.total = {pool.name: pool.total for pool in pools}
        self.free = dict(self.total)
        self.free_items = {pool.name: list(pool.items) for pool in pools if pool.items}
        self.held: dict[str, Allocation] = {}
        #: Most jobs at once (-j): every job takes one slot besides what it asks for.
        self.slots = slots

    def fits(self, request: Request) -> bool:
        if len(self.held) >= self.slots:
            return False
        free = self.free
        for name, amount in request:  # noqa: SIM110 (a loop is faster than all() here, the hot path)
            if free.get(name, 0) < amount:
                return False
        return True

    def could_ever(self, request: Request) -> bool:
        total = self.total
        for name, amount in request:  # noqa: SIM110 (the hot path: a loop is faster than all())
            if total.get(name, 0) < amount:
                return False
        return True

    def has_room(self) -> bool:
        """Whether any job could start here now (each needs a slot and a CPU)."""
        return len(self.held) < self.slots and self.free.get(CPUS, 0) >= 1

    def take(self, job_id: str, request: Request) -> Allocation:
        """Allocate ``request`` (which fits) to ``job_id``: the lowest free items of indexed pools."""
        granted = []
        for name, amount in request:
            self.free[name] -= amount
            items: tuple[str, ...] = ()
            pool_items = self.free_items.get(name)
            if pool_items is not None:
                items = tuple(pool_items[:amount])
                del pool_items[:amount]
            granted.append((name, amount, items))
        allocation = tuple(granted)
        self.held[job_id] = allocation
        return allocation

    def adopt(self, job_id: str, allocation: Allocation) -> None:
        """A job a worker says it runs with ``allocation`` (after a server restart): hold what it
        says, as far as it is free (a worker's word is the truth of what runs there)."""
        kept = []
        for name, amount, items in allocation:
            if name not in self.total:
                continue
            pool_items = self.free_items.get(name)
            if pool_items is not None:
                items = tuple(i for i in items if i in pool_items)
                for item in items:
                    pool_items.remove(item)
                amount = len(items)
            else:
                amount = max(0, min(amount, self.free[name]))
            self.free[name] -= amount
            kept.append((name, amount, items))
        self.held[job_id] = tuple(kept)

    def release(self, job_id: str) -> None:
        allocation = self.held.pop(job_id, None)
        if allocation is None:
            return
        for name, amount, items in allocation:
            self.free[name] += amount
            pool_items = self.free_items.get(name)
            if pool_items is not None:
                pool_items.extend(items)
                order = self.pools[name].items
                pool_items.sort(key=order.index)

    def usage(self) -> list[tuple[str, int, int]]:
        """(name, used, total) per pool."""
        return [(name, total - self.free[name], total) for name, total in self.total.items()]


def why_waiting(request: Request, workers: list[Holdings]) -> str:
    """Why a job with ``request`` cannot start on any of ``workers`` now ('' if one could take it)."""
    for name, amount in request:
        having = [w for w in workers if w.total.get(name, 0) > 0]
        if not having:
            return f"no connected worker has resource {name}"
        need = f"needs {name}={format_amount(name, amount)}"
        most = max(w.total[name] for w in having)
        if most < amount:
            return f"{need}: no connected worker has that much (the most is {format_amount(name, most)})"
        if not any(w.free.get(name, 0) >= amount for w in having):
            total = sum(w.total[name] for w in having)
            return (f"{need}: no worker has {format_amount(name, amount)} free "
                    f"({len(having)} worker{'s' if len(having) > 1 else ''} "
                    f"{'have' if len(having) > 1 else 'has'} {format_amount(name, total)} in total)")
    if not any(w.could_ever(request) for w in workers):
        return f"needs {describe(request)}: no connected worker has all of it"
    if not any(w.fits(request) for w in workers):
        return f"needs {describe(request)}: no worker has all of it free at once"
    return ""


def never_fits(request: Request, workers: list[Holdings]) -> str:
    """Why no connected worker could *ever* run ``request`` ('' if one could)."""
    if any(w.could_ever(request) for w in workers):
        return ""
    return why_waiting(request, workers) or f"needs {describe(request)}: no connected worker has all of it"
