"""The staging part of the worker's sans-IO core (``jq --stage``): a staged run's tree
coming in before it starts, and its results going back after it ends.

A mixin of :class:`~jobqueue.worker.core.WorkerCore`: it moves a run only through the core's
:meth:`WorkerCore._transition`, which stays the one writer of ``Run.state``.
The staging itself (blobs, the private directory, results) is :mod:`jobqueue.staging.workerside`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .. import protocol as p
from .actions import Action, CoreConfig, Spawn, ToStager
from .runstate import Run, RunEvent, RunState

S, E = RunState, RunEvent


class StagingMixin:
    """The core's inputs and handlers for staged runs (states STAGING and FETCHING)."""

    if TYPE_CHECKING:  # what it uses of WorkerCore
        cfg: CoreConfig
        runs: dict[str, Run]
        _out: list[Action]

        def _transition(self, run: Run, event: RunEvent, now: float) -> None: ...
        def _actions(self, now: float) -> list[Action]: ...
        def _log(self, event: str, **fields: Any) -> None: ...
        def _run(self, job_id: str, attempt: int) -> Run | None: ...

    def on_staged(self, job_id: str, cwd: bytes, now: float) -> list[Action]:
        """The run's tree is in its private directory ``cwd``: start it there."""
        run = self.runs.get(job_id)
        if run is not None and run.state is S.STAGING:
            self._transition(run, E.STAGED, now)
            if run.spec.timeout:  # --timeout limits the run, not the staging before it
                run.deadline = now + run.spec.timeout
            env = run.spec.env if b"PWD" not in run.spec.env else {**run.spec.env, b"PWD": cwd}
            self._out.append(Spawn(job_id, msgspec.structs.replace(run.spec, cwd=cwd, env=env), run.allocation))
        return self._actions(now)

    def on_stage_failed(self, job_id: str, why: str, now: float) -> list[Action]:
        run = self.runs.get(job_id)
        if run is not None and run.state is S.STAGING:
            self._log("job-failed", job=job_id, reason="failed", why=why)
            self._end_staging(run, 255, "failed", f"{why} (on worker {self.cfg.name})", now)
        return self._actions(now)

    def on_results_delivered(self, job_id: str, now: float) -> list[Action]:
        """A staged run's results are all with its client: report its end."""
        run = self.runs.get(job_id)
        if run is not None and run.state is S.FETCHING:
            self._transition(run, E.FINISH, now)
        return self._actions(now)

    def _end_staging(self, run: Run, status: int, reason: str, message: str, now: float) -> None:
        run.exit_status, run.reason, run.kill_reason = status, reason, message
        for stream in run.streams.values():
            stream.open = False
        run.stdin.open = False
        self._transition(run, E.STAGE_FAILED, now)

    def _on_stage_message(self, msg: p.Blob | p.Want, now: float) -> None:
        run = self._run(msg.job_id, msg.attempt)
        wanted = S.STAGING if isinstance(msg, p.Blob) else S.FETCHING
        if run is not None and run.state is wanted:
            self._out.append(ToStager(msg))
