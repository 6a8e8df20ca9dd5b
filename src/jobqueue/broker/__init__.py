"""The broker's logic as a pure state machine (sans-IO).

Events in: :meth:`Broker.receive` (a frame from a peer) and :meth:`Broker.tick`
(time passed), both given ``now``.  Messages out: the :class:`Send` list they
return, plus :attr:`Broker.events` for the log.  No sockets, no clock.

What it does: keeps the queue and matches jobs to workers' resources (both in
:mod:`jobqueue.scheduler`: priority, then first-in first-out, on the worker
that has waited longest among those whose tags and free resources fit),
routes a job's stdio between its client and its worker, watches the
liveness of every peer, requeues the jobs of lost workers, kills the jobs of
lost clients, and rebuilds its state after a restart from what clients and
workers tell it again.  A job's moves are the table in :mod:`jobqueue.jobstate`.
"""

from ..model import Client, Job, Peer, Worker
from .base import Frame, Send
from .core import Broker, Census

__all__ = ["Broker", "Census", "Client", "Frame", "Job", "Peer", "Send", "Worker"]
