"""jq's side of ``--stage``: snapshot DIR before the job is queued, and report how the
results came back when it ends.

:mod:`jobqueue.jq` imports this module only when ``--stage`` is given (only then are
hashing and walking loaded); the transfer itself is :mod:`.clientside`'s.
"""

from __future__ import annotations

from ..jq import Exit
from .attach import StageError, stage_job

TYPE_CHECKING = False
if TYPE_CHECKING:  # jq loads this module: no typing at run time
    from ..client import ClientJob
    from ..jq import JqOptions
    from ..jq_terminal import Terminal


def stage(job: ClientJob, options: JqOptions, term: Terminal) -> None:
    """--stage: snapshot DIR before anything is queued (only now are hashing and walking loaded)."""
    assert options.stage is not None
    try:
        stage_job(job, options.stage, stage_git=options.stage_git, excludes=options.excludes, fetch=options.fetch,
                  no_fetch=options.no_fetch, fetch_deletes=options.fetch_deletes, say=term.say,
                  verbose=options.verbose)
    except StageError as e:
        raise Exit(255, str(e)) from None


def staging_finished(job: ClientJob, term: Terminal) -> bool:
    """The staged job ended: close its stager and say what came back (-v); True when its
    results could not be brought back (jq then ends with 255 and why)."""
    job.stager.close()
    if term.options.verbose:
        term.say(job.stager.summary_fetched())
    if job.stager.failed:
        term.result, term.message = 255, job.stager.failed
        return True
    return False
