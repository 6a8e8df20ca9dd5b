"""What becomes of a job the Python API's caller cancelled while the server may not
hear of it (pure: no I/O, no clock).

``future.cancel()`` succeeds while the executor has not seen the job start, and the
future is cancelled (and its waiters told) at once, whatever the server's state.
What must not happen is the job running anyway: a message queued while the server
is gone dies at the next reconnection (only the jobs themselves are sent again), and
a restarted server drops a signal for a job it has not re-attached yet.  So:

- while the job has not started as far as we know, it is *withdrawn*: its cancel
  (SIGTERM) goes out on the current connection at once, and every later connection
  carries the cancel in place of the job's submission
  (:meth:`jobqueue.client.ClientJob.restore_message`).  A server that still has the
  job drops it (or signals it, if it had started it meanwhile); a restarted one never
  queues it (were it running there after all, its worker re-attaches it to nobody,
  and the server stops it);
- once the job turns out to have started (its Started came after the cancel), each
  attempt's SIGTERM goes through jq's :class:`~jobqueue.jq_signals.SignalGate`: sent while the
  server has the job on the current connection, else held until the server says where
  the job stands again on a new one (a restarted server, once the job's worker is back
  and it re-attaches the job: the job is submitted again as running meanwhile).  No
  second signal abandons it: the executor carries the job until it ends, or until
  the executor closes (the server then stops the jobs of a client that left);
- a job requeued after that is withdrawn again: its cancel at once, and the server
  drops it.

:class:`CancelledJob` decides; :class:`jobqueue.api.Executor` sends.
"""

from __future__ import annotations

from .jq_signals import FORWARD, SignalGate

#: The signal a cancel sends (the server drops a queued job on any signal; a running one gets it).
SIGTERM = 15


class CancelledJob:
    """One cancelled job's signal, until the job ends.

    Inputs are the link's state as :class:`~jobqueue.connection.Connection` has it:
    ``up`` (welcomed), ``generation`` (which connection), ``answered`` (when the latest
    ping the server answered on it was sent: it has everything sent before), and the
    job's: ``running`` (it started, as
    far as we know) and which ``attempt``, ``news`` (a count of the server's word on
    where it stands: queued, started, requeued) and ``attached`` (the latest of it came
    on the current connection)."""

    __slots__ = ("signum", "patience", "gate", "attempt", "withdrawn")

    def __init__(self, patience: float, signum: int = SIGTERM) -> None:
        self.signum = signum
        #: How long the server has to be heard from after a signal to a running job.
        self.patience = patience
        #: While the job runs: its signal's gate (None while it has not started).
        self.gate: SignalGate | None = None
        #: The attempt the latest decision was for (a requeued job's next run needs its own signal).
        self.attempt = 0
        #: The cancel went out for the job not started (later connections carry it).
        self.withdrawn = False

    def poll(self, now: float, *, up: bool, generation: int, answered: float, running: bool,
             attempt: int, news: int, attached: bool) -> bool:
        """On the cancel, and after every round of the executor's loop: whether to send
        the signal now (with a ping behind it)."""
        if not running:
            if self.withdrawn and attempt == self.attempt:
                return False  # sent on this connection; a new one carries it instead of the job
            # Not sent yet, or a run we did not see running (Started and Requeued in one round)
            # may have taken it: the server queues the job again.
            self.gate, self.withdrawn, self.attempt = None, True, attempt
            return True
        self.withdrawn = False
        if self.gate is None or attempt != self.attempt:  # it (re)started: a signal to this run
            self.gate, self.attempt = SignalGate(self.patience, news), attempt
            kind, _ = self.gate.on_signal(self.signum, now, up=up, generation=generation, running=True,
                                          attached=attached)
            return kind == FORWARD
        # The gate's "heard from after the signal": an answer to a ping sent after it (not
        # output the server had sent before it read the signal).
        action = self.gate.poll(now, up=up, generation=generation, last_heard=answered, running=True,
                                news=news, attached=attached)
        return action is not None and action[0] == FORWARD  # held (the server gone, or not re-attached): wait
