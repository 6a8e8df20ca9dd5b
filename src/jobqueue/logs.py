"""One log line per event that matters, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Logger:
    def __init__(self, role: str, fmt: str = "text", stream: TextIO | None = None, *, buffered: bool = False) -> None:
        self.role = role
        self.fmt = fmt
        self.stream = stream or sys.stderr
        #: Buffered: lines go out at :meth:`flush` (the server's loop calls it once a round).
        self.buffered = buffered

    def event(self, kind: str, **fields: Any) -> None:
        stamp = time.time()
        if self.fmt == "json":
            line = json.dumps({"ts": round(stamp, 6), "role": self.role, "event": kind, **fields}, default=str)
        else:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d}"
            parts = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
            line = f"{when} {self.role} {kind} {parts}".rstrip()
        try:
            self.stream.write(line + "\n")
            if not self.buffered:
                self.stream.flush()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    return repr(text) if (" " in text or not text) else text
