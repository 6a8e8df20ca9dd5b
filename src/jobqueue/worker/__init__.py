"""jobqueue-worker: pulls jobs from the server and runs them.

One process serves ``slots`` jobs at once.  Each job runs in its own process
group (session) with pipes (or a pseudo-terminal for ``-t``) for its stdio.
Output is read only while the client's window has room (back-pressure), and
kept until the client acknowledges it, so it can be re-sent after the server
restarts.  When a job's leader exits, the rest of its process group is
killed: no orphan outlives its job.

- :mod:`.runstate`: a job run's lifecycle as one table;
- :mod:`.core`: the decisions, sans-IO (inputs and ``now`` in, :mod:`.actions` out);
- :mod:`.streams`: output offsets and acknowledgements, the stdin buffer;
- :mod:`.shell`: the poll loop that carries the actions out; :mod:`.spawn`: starting processes.
"""

from .shell import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
