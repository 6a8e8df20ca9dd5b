"""CurveZMQ keys for clients, workers and the server (filled in by the security issue)."""

from __future__ import annotations

import os

from .config import UsageError
from .connection import Security

ENV_KEY = "JOBQUEUE_KEY"
ENV_SERVER_KEY = "JOBQUEUE_SERVER_KEY"


def client_security(key: str | None, server_key: str | None) -> Security | None:
    """Keys for a client or worker: the options win over the environment."""
    key = key or os.environ.get(ENV_KEY)
    server_key = server_key or os.environ.get(ENV_SERVER_KEY)
    if not key and not server_key:
        return None
    if not key or not server_key:
        raise UsageError("CURVE needs both --key (our secret key) and --server-key (the server's public key)")
    raise UsageError("CURVE keys are not supported yet")
