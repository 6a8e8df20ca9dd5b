"""The log lines: a typed event's line (the fast path) is the line of its fields."""

from __future__ import annotations

import io
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import events as ev
from jobqueue.logs import Logger

EVENT_CLASSES: list[Any] = [c for c in vars(ev).values()
                            if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event]
texts = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "a b", "x\n", "local"]))
values = st.one_of(texts, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(texts, max_size=3))


@st.composite
def events(draw: st.DrawFn) -> ev.Event:
    cls = draw(st.sampled_from(EVENT_CLASSES))
    event: ev.Event = cls(*[draw(values) for _ in cls.__struct_fields__])
    return event


def _line(fmt: str, write: Any) -> str:
    stream = io.StringIO()
    with mock.patch("time.time", lambda: 1764620000.25):
        write(Logger("server", fmt, stream))
    return stream.getvalue()


@settings(max_examples=300)
@given(events(), st.sampled_from(["text", "json"]))
def test_an_events_line_is_the_line_of_its_fields(event: ev.Event, fmt: str) -> None:
    assert _line(fmt, lambda log: log.record(event)) == _line(fmt, lambda log: log.event(event.kind, **event.fields()))


def test_text_line_quotes_spaces_and_leaves_out_empty_optional_fields() -> None:
    line = _line("text", lambda log: log.record(ev.JobQueued("j1", "my client", 0, [], "")))
    assert line.endswith(" server job-queued job=j1 client='my client' priority=0 tags=- owner=''\n")
    line = _line("text", lambda log: log.record(ev.WorkerJoined("w1", "h", 2, ["gpu", "x"])))
    assert line.endswith(" server worker-joined worker=w1 host=h slots=2 tags=gpu,x\n")  # no spawn=
    assert line.startswith("20") and ".250 " in line
