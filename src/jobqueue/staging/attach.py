"""Turning a job into a staged one, for jq and the Python API (client side)."""

from __future__ import annotations

import os

from .clientside import ClientStager, inline_blobs
from .fetchplan import FetchRules
from .scan import StageError, scan

TYPE_CHECKING = False
if TYPE_CHECKING:  # jq loads this module: no typing at run time
    from collections.abc import Callable, Iterable
    from typing import Any


def relative_cwd(root: str | bytes, cwd: str | bytes) -> bytes:
    """Where the job runs inside the staged tree: ``cwd``'s place under ``root``,
    or the tree's root (empty) when ``cwd`` is not inside it."""
    root_real, cwd_real = os.path.realpath(os.fsencode(root)), os.path.realpath(os.fsencode(cwd))
    if cwd_real == root_real or not cwd_real.startswith(root_real.rstrip(b"/") + b"/"):
        return b""
    return os.path.relpath(cwd_real, root_real)


def stage_job(
    job: Any,
    root: str | bytes,
    *,
    stage_git: bool = False,
    excludes: Iterable[str] = (),
    fetch: Iterable[str] = (),
    no_fetch: bool = False,
    fetch_deletes: bool = False,
    say: Callable[[str], None],
    verbose: bool = False,
) -> None:
    """Snapshot ``root`` and make ``job`` (a :class:`jobqueue.client.ClientJob`
    not yet submitted) a staged job: its spec names the tree, and its cwd becomes
    relative to it.  :class:`StageError` (naming the file) when it cannot be."""
    snapshot = scan(root, stage_git=stage_git, excludes=excludes)
    if verbose:
        for path, kind in snapshot.skipped:
            say(f"jq: not staged ({kind}): {os.fsdecode(os.path.join(snapshot.root, path))}")
    rules = FetchRules(tuple(fetch), no_fetch, fetch_deletes)
    job.spec.stage = snapshot.root_digest
    job.spec.stage_push = inline_blobs(snapshot)
    job.spec.cwd = relative_cwd(root, job.spec.cwd)
    job.stager = ClientStager(snapshot, rules, job.p, job.job_id, job._post, say)
    job.stager.sent_with_the_job(job.spec.stage_push)


__all__ = ["StageError", "stage_job", "relative_cwd"]
