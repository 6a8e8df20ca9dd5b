"""What a dashboard watches, kept beside the broker (see :mod:`.observer`)."""

from .observer import Observer
from .records import HISTORY, INTERVAL, POINTS, PUSH_EVERY, TAIL_KEEP, TAIL_WINDOW

__all__ = ["HISTORY", "INTERVAL", "POINTS", "PUSH_EVERY", "TAIL_KEEP", "TAIL_WINDOW", "Observer"]
