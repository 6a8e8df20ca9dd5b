"""jobqueue: run a command line on another machine as if it ran locally.

``jobqueue.run`` and ``jobqueue.Executor`` mirror :func:`subprocess.run` and
:class:`concurrent.futures.Executor` (imported lazily, so that ``jq`` stays lean).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # jq imports this package first: it must not load typing
    from typing import Any

__version__ = "0.1.0"
__all__ = ["run", "Executor", "JobqueueError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run", "Executor", "JobqueueError"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'jobqueue' has no attribute {name!r}")
