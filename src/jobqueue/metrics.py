"""Prometheus metrics of the server (``jobqueue-server --metrics HOST:PORT``).

Fed from the broker's typed events (the same the server logs) for the
counters and histograms; the gauges come from :meth:`Broker.census`, in the
server's own thread, at most every :data:`REFRESH` seconds.  This module is
imported only when ``--metrics`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import events as ev
from .broker import Broker
from .config import UsageError

#: Seconds between two readings of the broker's state for the gauges.
REFRESH = 0.5
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600, float("inf"))


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (every interface) or ``PORT`` (loopback only)."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad --metrics address {text!r}: expected HOST:PORT, :PORT or PORT (e.g. :9821)")
    if not sep:
        host = "127.0.0.1"
    return host.strip("[]") or "0.0.0.0", int(port)


class Metrics:
    def __init__(self, broker: Broker, registry: CollectorRegistry | None = None) -> None:
        self.broker = broker
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queued = Gauge("jobqueue_jobs_queued", "Jobs waiting for a worker", registry=r)
        self.running = Gauge("jobqueue_jobs_running", "Jobs assigned to a worker and not ended", registry=r)
        self.workers = Gauge("jobqueue_workers_connected", "Connected workers", registry=r)
        self.busy = Gauge("jobqueue_workers_busy", "Connected workers running at least one job", registry=r)
        self.slots = Gauge("jobqueue_worker_slots", "Job slots of the connected workers", registry=r)
        self.finished = Counter("jobqueue_jobs_finished", "Jobs that ended, by outcome "
                                "(succeeded, nonzero, signaled, timeout, not-found, not-executable, failed, "
                                "cancelled, lost, out-of-memory)", ["outcome"], registry=r)
        self.queue_wait = Histogram("jobqueue_job_queue_wait_seconds", "Seconds a job waited in the queue "
                                    "before it started", buckets=WAIT_BUCKETS, registry=r)
        self.run_time = Histogram("jobqueue_job_run_seconds", "Seconds a job ran, start to end",
                                  buckets=RUN_BUCKETS, registry=r)
        self._next_refresh = 0.0

    def serve(self, address: str) -> None:
        """Serve ``/metrics`` over HTTP from a background thread."""
        host, port = parse_address(address)
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}; "
                             "choose another --metrics address") from None

    def observe(self, events: Iterable[ev.Event], now: float) -> None:
        """Count the broker's new events; refresh the gauges when due."""
        for event in events:
            if isinstance(event, ev.JobStarted):
                self.queue_wait.observe(event.waited)
            elif isinstance(event, ev.JobFinished):
                self.run_time.observe(event.ran)
            label = ev.outcome(event)
            if label is not None:
                self.finished.labels(outcome=label).inc()
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH
            self.refresh()

    def refresh(self) -> None:
        census = self.broker.census()
        self.queued.set(census.queued)
        self.running.set(census.running)
        self.workers.set(census.workers)
        self.busy.set(census.busy)
        self.slots.set(census.slots)
