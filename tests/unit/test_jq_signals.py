"""jq's SignalGate: what becomes of a signal the server may never pass on (fake clock and link)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.jq_signals import ABANDON, DETACHED, FORWARD, HOLD, MIN_PATIENCE, SignalGate, signal_name

INT, TERM = 2, 15


class Link:
    """The connection as the gate sees it: up or not, which one, when last heard from."""

    def __init__(self) -> None:
        self.up, self.generation, self.last_heard = True, 1, 0.0

    def drop(self) -> None:
        self.up, self.generation = False, self.generation + 1

    def back(self, now: float) -> None:
        self.up, self.generation, self.last_heard = True, self.generation + 1, now


def signal(gate: SignalGate, link: Link, signum: int, now: float, running: bool,
           attached: bool = True) -> tuple[str, int]:
    return gate.on_signal(signum, now, up=link.up, generation=link.generation, running=running, attached=attached)


def poll(gate: SignalGate, link: Link, now: float, running: bool, news: int = 0,
         attached: bool = True) -> tuple[str, int] | None:
    return gate.poll(now, up=link.up, generation=link.generation, last_heard=link.last_heard, running=running,
                     news=news, attached=attached)


def test_a_queued_job_is_abandoned_at_once_when_the_link_is_down() -> None:
    gate, link = SignalGate(1.0), Link()
    link.drop()
    assert signal(gate, link, TERM, 5.0, running=False) == (ABANDON, TERM)


def test_a_running_jobs_signal_is_held_and_a_second_one_abandons() -> None:
    gate, link = SignalGate(1.0), Link()
    link.drop()
    assert signal(gate, link, INT, 5.0, running=True) == (HOLD, INT)
    assert poll(gate, link, 60.0, running=True) is None  # no deadline: it waits for the server, or the user
    assert gate.next_wakeup(60.0) is None
    assert signal(gate, link, TERM, 61.0, running=True) == (ABANDON, TERM)


def test_a_forwarded_signal_is_confirmed_by_word_from_the_server_after_it() -> None:
    gate, link = SignalGate(1.0), Link()
    link.last_heard = 4.0
    assert signal(gate, link, INT, 5.0, running=False) == (FORWARD, INT)
    assert gate.next_wakeup(5.2) == pytest.approx(0.8)
    link.last_heard = 5.0  # heard in the same round as the signal went out: before the server had it
    assert poll(gate, link, 5.0, running=False) is None and gate.signum == INT
    link.last_heard = 5.3
    assert poll(gate, link, 5.3, running=False) is None
    assert gate.signum is None and gate.next_wakeup(5.3) is None
    assert poll(gate, link, 100.0, running=False) is None  # nothing pending: no deadline


def test_an_unanswered_signal_abandons_a_queued_job_after_the_patience() -> None:
    gate, link = SignalGate(1.0), Link()
    assert signal(gate, link, TERM, 5.0, running=False) == (FORWARD, TERM)
    assert poll(gate, link, 5.9, running=False) is None
    assert poll(gate, link, 6.0, running=False) == (ABANDON, TERM)


def test_an_unanswered_signal_to_a_running_job_is_held_then_the_server_answers() -> None:
    gate, link = SignalGate(1.0), Link()
    assert signal(gate, link, INT, 5.0, running=True) == (FORWARD, INT)
    assert poll(gate, link, 6.0, running=True) == (HOLD, INT)
    assert poll(gate, link, 6.5, running=True) is None  # said once
    link.last_heard = 7.0  # the frozen server runs again: it had the signal all along
    assert poll(gate, link, 7.0, running=True) is None
    assert gate.signum is None and not gate.held
    assert signal(gate, link, INT, 8.0, running=True) == (FORWARD, INT)  # forwarded again, not abandoned


def test_a_signal_lost_with_its_connection_is_decided_at_once() -> None:
    gate, link = SignalGate(1.0), Link()
    assert signal(gate, link, TERM, 5.0, running=False) == (FORWARD, TERM)
    link.back(5.1)  # a new connection (welcomed already): the signal died with the old one
    assert poll(gate, link, 5.1, running=False) == (ABANDON, TERM)


def test_a_held_signal_goes_out_once_the_server_says_where_the_job_stands() -> None:
    gate, link = SignalGate(1.0, news=1), Link()
    link.drop()
    assert signal(gate, link, INT, 5.0, running=True) == (HOLD, INT)
    link.back(9.0)
    assert poll(gate, link, 9.0, running=True, news=1) is None  # welcomed, but the job not re-attached yet
    assert poll(gate, link, 9.2, running=True, news=2) == (FORWARD, INT)  # Started (resumed)
    assert not gate.held  # the server is there: another signal is forwarded
    link.last_heard = 9.3
    assert poll(gate, link, 9.3, running=True, news=2) is None and gate.signum is None


def test_a_running_jobs_signal_waits_until_the_server_has_re_attached_it() -> None:
    """A restarted server that has not re-attached the job (its worker is not back) would
    drop the signal: it waits for the job's news on this connection, and a second one abandons."""
    gate, link = SignalGate(1.0, news=3), Link()
    assert signal(gate, link, INT, 5.0, running=True, attached=False) == (DETACHED, INT)
    assert gate.detached and poll(gate, link, 30.0, running=True, news=3, attached=False) is None
    assert poll(gate, link, 31.0, running=True, news=4) == (FORWARD, INT)  # Started (resumed)
    assert not gate.detached and not gate.held

    gate = SignalGate(1.0, news=3)
    assert signal(gate, link, INT, 5.0, running=True, attached=False) == (DETACHED, INT)
    assert signal(gate, link, INT, 6.0, running=True, attached=False) == (ABANDON, INT)


def test_a_detached_jobs_signal_cancels_it_once_requeued() -> None:
    gate, link = SignalGate(1.0, news=3), Link()
    assert signal(gate, link, TERM, 5.0, running=True, attached=False) == (DETACHED, TERM)
    assert poll(gate, link, 6.0, running=False, news=4, attached=True) == (FORWARD, TERM)  # Requeued


def test_news_on_the_signals_own_connection_does_not_send_it_twice() -> None:
    gate, link = SignalGate(1.0), Link()
    assert signal(gate, link, INT, 5.0, running=False) == (FORWARD, INT)
    assert poll(gate, link, 5.0, running=False, news=1) is None  # Queued, in the same round


def test_repeated_signals_keep_the_first_deadline() -> None:
    gate, link = SignalGate(1.0), Link()
    signal(gate, link, INT, 5.0, running=False)
    signal(gate, link, INT, 5.6, running=False)
    assert poll(gate, link, 6.0, running=False) == (ABANDON, INT)


def test_patience_has_a_floor_and_names_are_spelled() -> None:
    assert SignalGate(0.2).patience == MIN_PATIENCE
    assert SignalGate(3.0).patience == 3.0
    assert (signal_name(15), signal_name(2), signal_name(40)) == ("SIGTERM", "SIGINT", "signal 40")


events = st.lists(st.one_of(
    st.tuples(st.just("signal"), st.sampled_from([1, 2, 3, 10, 12, 15])),
    st.tuples(st.just("drop"), st.none()),
    st.tuples(st.just("back"), st.none()),
    st.tuples(st.just("heard"), st.none()),
    st.tuples(st.just("news"), st.none()),
    st.tuples(st.just("start"), st.none()),
    st.tuples(st.just("requeue"), st.none()),
    st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
), max_size=40)


@settings(max_examples=500, deadline=None)
@given(events)
def test_a_signal_is_never_left_waiting_silently(script: list[tuple[str, object]]) -> None:
    """Whatever happens, a signal the server has not shown it has is either on a deadline
    or the user was told it waits (HOLD, DETACHED); those only for a running job; a
    running job's signal goes out only on a connection that re-attached it; a signal
    while one is held always ends jq; and past the deadline without word, poll decides."""
    gate, link, now, running, news, news_generation = SignalGate(1.0), Link(), 0.0, False, 0, 1
    for kind, arg in script:
        now += 0.01
        attached = news_generation == link.generation
        if kind == "signal":
            assert isinstance(arg, int)
            was_held = gate.held
            action = signal(gate, link, arg, now, running, attached)
            if was_held:
                assert action == (ABANDON, arg)
            if action[0] == ABANDON:
                return  # jq ends
            assert action[0] == FORWARD or running
            assert action[0] != FORWARD or not running or attached
        elif kind == "drop":
            link.drop()
        elif kind == "back":
            link.back(now)
        elif kind == "heard" and link.up:
            link.last_heard = now
        elif kind in ("news", "start", "requeue") and link.up:
            news, news_generation = news + 1, link.generation
            running = {"news": running, "start": True, "requeue": False}[kind]
        elif kind == "wait":
            assert isinstance(arg, float)
            now += arg
        attached = news_generation == link.generation
        action = poll(gate, link, now, running, news, attached)
        if action is not None:
            assert action[0] in (FORWARD, ABANDON) or running
            assert action[0] != FORWARD or not running or attached
            if action[0] == ABANDON:
                return
        if gate.signum is not None:
            assert gate.held or gate.sent_at is not None, "a signal waits with no deadline, and nobody told"
            if not gate.held:
                assert gate.next_wakeup(now) is not None and gate.sent_at is not None
                late = gate.sent_at + gate.patience  # when next_wakeup says to poll again
                decided = poll(gate, link, late, running, news, attached)
                assert decided is not None and decided[0] in (HOLD, ABANDON)
                return
