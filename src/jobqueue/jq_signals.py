"""What jq does with a signal the server may never pass on (pure: no I/O, no clock).

jq delivers the signals it gets to the job through the server.  When the server
has gone (killed, restarting, cut off) that delivery cannot happen, and a jq that
only forwarded would ignore its user until the server came back, which may be
never.  So each forwarded signal is followed by a ping, and the server has the
signal once it is heard from again on the same connection (it reads a
connection's messages in order).  A signal the server has not shown it has:

- for a job that has not started, ends jq at once (``abandon``: 128+N, one line):
  nothing runs yet, and nobody re-submits the job (a restarted server never sees
  it; one that was only frozen or cut off cancels it on the signal, or drops it
  with its gone client: its Bye, or liveness);
- for a running job, is kept (``hold``, one line saying so) and delivered once
  the server tells where the job stands again (re-attached, queued or requeued
  on a new connection): the job's process lives on its worker and a restarted
  server resumes it; another signal meanwhile ends jq (``abandon``), and the
  server, or the worker once it gives up on the server, stops the job.

A running job's signal also waits (``detached``, one line) while the server is
there but has not re-attached the job on this connection yet (a restarted
server waits for its worker to come back): it would drop the signal.

:class:`SignalGate` decides; :mod:`jobqueue.jq` carries out its actions.  Loaded on
jq's first signal only.  The Python API delivers a cancelled job's signal through it
too, once the job turns out to have started (:mod:`jobqueue.api_cancel`).
"""

from __future__ import annotations

FORWARD = "forward"  # send the signal to the server, with a ping behind it
HOLD = "hold"  # keep it for the server's return; tell the user
DETACHED = "detached"  # keep it until the server re-attaches the job; tell the user
ABANDON = "abandon"  # end jq now with 128+N

#: The shortest time the server has to answer a signal's ping (a test's fast heartbeat
#: on a loaded machine is not a lost server).
MIN_PATIENCE = 0.5

NAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 10: "SIGUSR1", 12: "SIGUSR2", 15: "SIGTERM"}


def signal_name(signum: int) -> str:
    return NAMES.get(signum, f"signal {signum}")


class SignalGate:
    """One job's signals that the server has not shown it has.

    Inputs are the link's state as :class:`~jobqueue.connection.Connection` has it:
    ``up`` (the current connection was welcomed), ``generation`` (which connection),
    ``last_heard`` (when the latest ping the server answered was sent: a ping sent after
    the signal and answered shows the server read the signal; output the server sent
    before reading it would not), and the job's: ``running``
    (it started, as far as we know), ``attached`` (the server said where it stands on
    this connection) and ``news`` (a count of the server's word on where the job
    stands: queued, started, requeued).  Each method returns the action to carry
    out, ``(kind, signum)``, or None."""

    __slots__ = ("patience", "signum", "sent_at", "generation", "held", "detached", "news")

    def __init__(self, patience: float, news: int = 0) -> None:
        #: How long the server has to be heard from after a signal went out.
        self.patience = max(patience, MIN_PATIENCE)
        #: The latest signal the server has not shown it has (None: none).
        self.signum: int | None = None
        #: When it went out, unanswered since (None: held, not sent).
        self.sent_at: float | None = None
        #: The connection it went out on.
        self.generation = -1
        #: The user was told it waits for the server: another signal abandons the job.
        self.held = False
        #: Held because the server has not re-attached the job yet (not for its silence).
        self.detached = False
        self.news = news

    def on_signal(self, signum: int, now: float, *, up: bool, generation: int, running: bool,
                  attached: bool = True) -> tuple[str, int]:
        """jq got ``signum`` (one it forwards)."""
        if self.held:
            return ABANDON, signum
        if not up:
            return self._unanswered(signum, running)
        if running and not attached:
            self.signum, self.sent_at, self.held, self.detached = signum, None, True, True
            return DETACHED, signum
        if self.sent_at is None or self.generation != generation:
            self.sent_at, self.generation = now, generation  # an earlier unanswered one keeps its deadline
        self.signum = signum
        return FORWARD, signum

    def poll(self, now: float, *, up: bool, generation: int, last_heard: float, running: bool,
             news: int, attached: bool = True) -> tuple[str, int] | None:
        """After every round of jq's loop: the server's answer, its silence, or its return."""
        if self.signum is None:
            self.news = news
            return None
        if self.sent_at is not None and generation == self.generation and last_heard > self.sent_at:
            self._clear()  # heard from after the signal, on its connection: the server has it
            self.news = news
            return None
        if news != self.news:
            self.news = news
            if up and (attached or not running) and (self.sent_at is None or generation != self.generation):
                # The server says where the job stands on a new connection: deliver it now.
                self.sent_at, self.generation, self.held, self.detached = now, generation, False, False
                return FORWARD, self.signum
        if self.held or self.sent_at is None:
            return None  # told already: waiting for the server, or for another signal
        if generation != self.generation or not up or now >= self.sent_at + self.patience:
            return self._unanswered(self.signum, running)  # lost with its connection, or unanswered
        return None

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until :meth:`poll` must run again (None: no deadline)."""
        if self.signum is None or self.sent_at is None or self.held:
            return None
        return max(0.0, self.sent_at + self.patience - now)

    def _unanswered(self, signum: int, running: bool) -> tuple[str, int]:
        if not running:
            return ABANDON, signum
        self.signum, self.held, self.detached = signum, True, False
        return HOLD, signum

    def _clear(self) -> None:
        self.signum = self.sent_at = None
        self.generation = -1
        self.held = self.detached = False
