"""One log line per event that matters, as text or JSON (``--log-format``).

The server logs three events per job and the worker two: a line is built
with few Python calls (a typed event's fields through one getter per class).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .events import Event


class Logger:
    def __init__(self, role: str, fmt: str = "text", stream: TextIO | None = None, *, buffered: bool = False) -> None:
        self.role = role
        self.fmt = fmt
        self.stream = stream or sys.stderr
        #: Buffered: lines go out at :meth:`flush` (once a loop round, and before messages
        #: are sent, so a line is never later than what it reports), in one write: stderr
        #: is line-buffered, so its own buffer would write every line.
        self.buffered = buffered
        self._lines: list[str] = []
        self._second = (-1, "")  # the last second formatted, and its text (formatting is slow)

    def event(self, kind: str, **fields: Any) -> None:
        if self.fmt == "json":
            self._json(kind, fields)
        else:
            self._text(kind, [f"{name}={_text(value)}" for name, value in fields.items()])

    def record(self, event: Event) -> None:
        """A typed event (see :mod:`jobqueue.events`) as one line: its fields, in order,
        less those of ``OPTIONAL`` that are empty."""
        if self.fmt == "json":
            self._json(event.kind, event.fields())
            return
        labels, values, optional = _layout(type(event))
        if optional:
            self._text(event.kind, [label + _text(value) for label, value, leave_out in
                                    zip(labels, values(event), optional) if value or not leave_out])
        else:
            self._text(event.kind, [label + _text(value) for label, value in zip(labels, values(event))])

    def _json(self, kind: str, fields: dict[str, Any]) -> None:
        self._write(json.dumps({"ts": round(time.time(), 6), "role": self.role, "event": kind, **fields}, default=str))

    def _text(self, kind: str, fields: list[str]) -> None:
        stamp = time.time()
        second = int(stamp)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second)))
        self._write(f"{self._second[1]}.{int(stamp % 1 * 1000):03d} {self.role} {kind} {' '.join(fields)}".rstrip())

    def _write(self, line: str) -> None:
        if self.buffered:
            self._lines.append(line + "\n")
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        if not self._lines:
            return
        text, self._lines = "".join(self._lines), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _text(value: Any) -> str:
    kind = type(value)  # the usual kinds first
    if kind is str:
        return value if value and " " not in value else repr(value)
    if kind is int or kind is float:
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    return repr(text) if (" " in text or not text) else text


#: Per event class: its fields' ``name=`` labels, a getter of their values (a tuple),
#: and which fields are left out while empty (empty: none is).
_Layout = tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]], tuple[bool, ...]]
_layouts: dict[type, _Layout] = {}


def _layout(kind: type[Event]) -> _Layout:
    layout = _layouts.get(kind)
    if layout is None:
        names = kind.__struct_fields__
        values = attrgetter(*names) if len(names) > 1 else lambda event: tuple(getattr(event, n) for n in names)
        optional = tuple(name in kind.OPTIONAL for name in names)
        layout = _layouts[kind] = (tuple(f"{name}=" for name in names), values, optional if any(optional) else ())
    return layout
