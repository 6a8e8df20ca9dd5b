"""Chaos run of the real processes: a server, workers and many concurrent jq
clients with a ledger, and faults injected at seeded random times.

Each job's expected stdout, stderr and exit code derive from its index, and
every job reads a line of stdin that it echoes back, so a job that lost,
duplicated or reordered a byte, or ran with the wrong stdin, is caught.
Faults: server SIGKILL + restart on the same address, worker SIGKILL (a new
worker replaces it), worker SIGTERM (likewise), a frozen network link (a
worker behind a TCP relay that stops forwarding for a while), client SIGKILL
(its job must be killed and never start again).

    bench/chaos --scenario issue            # the issue's fixed scenario: 300 jobs, 4 workers -j2
    bench/chaos --seed 7 --jobs 2000 --duration 60
    bench/chaos --seeds 20 --scenario issue # the issue's scenario 20 times in a row
    bench/chaos --jobs 10000 --duration 600 --concurrency 100 --record   # the long soak, into bench/CHAOS.md

Prints one line per run and exits 1 if any job was lost, damaged, duplicated
or hung: zero is the only passing figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.relay import Relay  # noqa: E402

BIN = Path(os.environ.get("BENCH_BIN", REPO / ".venv" / "bin"))
#: The server notices a killed client within its liveness (heartbeats); until then its
#: queued job may still start.  After that bound plus this margin, it must never start.
LIVENESS = 5
KILL_MARGIN = 1.0
FAULTS = ("server-kill", "worker-kill", "worker-term", "link-freeze", "client-kill")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_command(i: int, runs: Path) -> list[str]:
    script = (f'echo {i} $(date +%s.%N) >> {runs}; read line; sleep 0.$(({i} % 9)); echo "job-{i} out $line"; '
              f'echo "job-{i} err" >&2; exit $(({i} % 7))')
    return ["sh", "-c", script]


def _without_notes(err: bytes) -> bytes:
    """The job's stderr: jq -v's own lines left out."""
    return b"".join(line for line in err.splitlines(keepends=True) if not line.startswith(b"jq: "))


def expected(i: int) -> tuple[bytes, bytes, int]:
    return f"job-{i} out in-{i}\n".encode(), f"job-{i} err\n".encode(), i % 7


@dataclass
class Client:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    killed_at: float | None = None
    out: bytes = b""
    err: bytes = b""
    code: int | None = None
    ended: float | None = None


@dataclass
class Run:
    seed: int
    workdir: Path
    jobs: int
    workers: int
    slots: int
    concurrency: int
    duration: float
    scenario: str
    heartbeat: float
    port: int = field(default_factory=free_port)
    faults: list[tuple[float, str]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.runs = self.workdir / "runs"
        self.rng = random.Random(self.seed)
        self.worker_seq = 0
        self.live_workers: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()

    # --- processes ----------------------------------------------------------------------------

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_server(self) -> None:
        self.server = self.spawn([str(BIN / "jobqueue-server"), self.endpoint, "--heartbeat",
                                  str(self.heartbeat)], "server")

    def start_worker(self, via_relay: bool = False) -> None:
        self.worker_seq += 1
        endpoint = self.endpoint
        if via_relay:
            relay = Relay(self.port)
            self.relays.append(relay)
            endpoint = f"tcp://127.0.0.1:{relay.port}"
        proc = self.spawn([str(BIN / "jobqueue-worker"), endpoint, "-j", str(self.slots), "--name",
                           f"w{self.worker_seq}"], f"worker-{self.worker_seq}")
        self.live_workers.append(proc)

    def start_client(self, i: int) -> None:
        env = {**os.environ, "JOBQUEUE_SERVER": self.endpoint}
        proc = subprocess.Popen([str(BIN / "jq"), "-v", *job_command(i, self.runs)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        client = Client(i, proc, time.monotonic())
        self.clients.append(client)
        threading.Thread(target=self._collect, args=(client,), daemon=True).start()

    def _collect(self, client: Client) -> None:
        out, err = client.proc.communicate(f"in-{client.index}\n".encode())
        client.out, client.err, client.code, client.ended = out, err, client.proc.returncode, time.monotonic()

    # --- faults ---------------------------------------------------------------------------------

    def inject(self, fault: str, now: float) -> None:
        self.faults.append((round(now, 3), fault))
        if fault == "server-kill":
            self.server.kill()
            self.server.wait()
            time.sleep(0.3)  # the outage the issue describes; not a synchronisation
            self.start_server()
        elif fault in ("worker-kill", "worker-term") and self.live_workers:
            victim = self.live_workers.pop(self.rng.randrange(len(self.live_workers)))
            victim.send_signal(signal.SIGKILL if fault == "worker-kill" else signal.SIGTERM)
            self.start_worker()
        elif fault == "link-freeze":
            if not self.relays:
                self.start_worker(via_relay=True)
            relay = self.rng.choice(self.relays)
            relay.freeze()
            threading.Timer(self.rng.uniform(0.5, 3.0), relay.thaw).start()
        elif fault == "client-kill":
            running = [c for c in self.clients if c.code is None and c.killed_at is None]
            if running:
                victim = self.rng.choice(running)
                victim.killed_at = time.time()
                victim.proc.kill()

    def schedule(self) -> list[tuple[float, str]]:
        if self.scenario == "issue":
            return [(1.5, "server-kill"), (3.3, "worker-kill")]
        plan, at = [], 1.0
        while at < self.duration * 0.8:
            plan.append((at, self.rng.choice(FAULTS)))
            at += self.rng.uniform(1.0, 4.0)
        return plan

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, object]:
        self.runs.touch()
        self.start_server()
        for n in range(self.workers):
            self.start_worker(via_relay=self.scenario != "issue" and n == 0)
        begin = time.monotonic()
        plan = self.schedule()
        next_job = 0
        while next_job < self.jobs or plan:
            now = time.monotonic() - begin
            while plan and plan[0][0] <= now:
                self.inject(plan.pop(0)[1], now)
            active = sum(1 for c in self.clients if c.code is None)
            while next_job < self.jobs and active < self.concurrency:
                self.start_client(next_job)
                next_job += 1
                active += 1
            time.sleep(0.01)
        for relay in self.relays:
            relay.thaw()
        hang_deadline = time.monotonic() + max(60.0, self.heartbeat * 60)
        while any(c.code is None for c in self.clients) and time.monotonic() < hang_deadline:
            time.sleep(0.1)
        return self.verdict(time.monotonic() - begin)

    def verdict(self, elapsed: float) -> dict[str, object]:
        starts: dict[int, list[float]] = {}
        for line in self.runs.read_text().splitlines():
            index, when = line.split()
            starts.setdefault(int(index), []).append(float(when))
        bad: dict[str, list[str]] = {"lost": [], "damaged": [], "hung": [], "ran-after-kill": []}
        for c in self.clients:
            if c.killed_at is not None:  # its job is killed and never starts again
                bound = c.killed_at + LIVENESS * self.heartbeat + KILL_MARGIN
                if any(when > bound for when in starts.get(c.index, [])):
                    bad["ran-after-kill"].append(f"job-{c.index}")
                continue
            if c.code is None:
                bad["hung"].append(f"job-{c.index}")
                continue
            out, err, code = expected(c.index)
            if c.code == 255 and b"jq:" in c.err and c.out == b"":
                bad["lost"].append(f"job-{c.index}: {c.err.decode(errors='replace').strip()[-200:]}")
            elif (c.out, c.code, _without_notes(c.err)) != (out, code, err):
                bad["damaged"].append(f"job-{c.index}: exit {c.code} (want {code}), stdout {c.out!r}, "
                                      f"stderr {c.err[-300:]!r}")
        return {
            "seed": self.seed, "scenario": self.scenario, "jobs": len(self.clients), "seconds": round(elapsed, 1),
            "faults": len(self.faults), "fault_kinds": sorted({f for _, f in self.faults}),
            "runs": sum(len(s) for s in starts.values()),
            "clients_killed": sum(c.killed_at is not None for c in self.clients),
            **{k: len(v) for k, v in bad.items()},
            "details": {k: v[:5] for k, v in bad.items() if v},
        }

    def stop(self) -> None:
        for relay in self.relays:
            relay.close()
        for c in self.clients:
            if c.code is None:
                c.proc.kill()
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["issue", "random"], default="random")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds over which faults are injected")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--record", action="store_true", help="add the runs' figures to bench/CHAOS.md")
    args = parser.parse_args()
    failures = 0
    results: list[dict[str, object]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        workdir = Path(tempfile.mkdtemp(prefix=f"jobqueue-chaos-{seed}-"))
        run = Run(seed, workdir, args.jobs, args.workers, args.slots, args.concurrency, args.duration,
                  args.scenario, args.heartbeat)
        try:
            result = run.run()
        finally:
            run.stop()
        bad = sum(int(result[k]) for k in ("lost", "damaged", "hung", "ran-after-kill"))  # type: ignore[call-overload]
        failures += bool(bad)
        result["workdir"] = str(workdir) if (bad or args.keep) else ""
        print(json.dumps(result), flush=True)
        results.append(result)
        if not bad and not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    if args.record:
        record(results, " ".join(sys.argv[1:]))
    return 1 if failures else 0


def record(results: list[dict[str, object]], command: str) -> None:
    """Append the runs to bench/CHAOS.md (kept by hand; bench/run includes it in RESULTS.md)."""
    path = REPO / "bench" / "CHAOS.md"
    head = ["## Chaos soak (bench/chaos.py)", "",
            "Real server, workers and concurrent jq clients with a ledger; faults at seeded random times. "
            "Zero lost, damaged, hung or run-after-kill is the only pass.", "",
            "| date | commit | command | jobs | job starts | faults | kinds | seconds | lost | damaged | hung "
            "| ran after kill |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = path.read_text().splitlines() if path.exists() else head
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M")
    for r in results:
        kinds = ", ".join(str(k) for k in r["fault_kinds"])  # type: ignore[attr-defined]
        lines.append(f"| {when} | {commit} | `bench/chaos.py {command}` (seed {r['seed']}) | {r['jobs']} | {r['runs']} "
                     f"| {r['faults']} | {kinds} | {r['seconds']} | {r['lost']} | {r['damaged']} | {r['hung']} "
                     f"| {r['ran-after-kill']} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
