"""One log line per event that matters, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .events import Event


class Logger:
    def __init__(self, role: str, fmt: str = "text", stream: TextIO | None = None, *, buffered: bool = False) -> None:
        self.role = role
        self.fmt = fmt
        self.stream = stream or sys.stderr
        #: Buffered: lines go out at :meth:`flush` (the loop calls it once a round), in one
        #: write: stderr is line-buffered, so its own buffer would write every line.
        self.buffered = buffered
        self._lines: list[str] = []
        self._second = (-1, "")  # the last second formatted, and its text (formatting is slow)

    def event(self, kind: str, **fields: Any) -> None:
        stamp = time.time()
        if self.fmt == "json":
            line = json.dumps({"ts": round(stamp, 6), "role": self.role, "event": kind, **fields}, default=str)
        else:
            when = f"{self._format_second(int(stamp))}.{int(stamp % 1 * 1000):03d}"
            parts = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
            line = f"{when} {self.role} {kind} {parts}".rstrip()
        if self.buffered:
            self._lines.append(line + "\n")
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _format_second(self, second: int) -> str:
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second)))
        return self._second[1]

    def record(self, event: Event) -> None:
        """A typed event (see :mod:`jobqueue.events`) as one line."""
        self.event(event.kind, **event.fields())

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
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    return repr(text) if (" " in text or not text) else text
