"""End-to-end: a bug never shows a user a Python traceback.  An unexpected exception
in jq, jobqueue-worker, jobqueue-server or jobqueue ends in one line
(``PROG: internal error: ...; please report it``), jq exits 255, and the traceback
appears only with JOBQUEUE_DEBUG=1.

Each command runs as itself (its real main), in a Python that first plants a bug
in the code it is about to run."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import Cluster, wait_for

#: Raises in place of the function it replaces.
BOOM = "def boom(*args, **kwargs):\n    raise RuntimeError('planted bug')\n"


def run_with_bug(cluster: Cluster, plant: str, main: str, *, debug: bool = False, wait: bool = True,
                 timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    code = f"import sys\n{BOOM}{plant}\n{main}\n"
    env = cluster.env(JOBQUEUE_DEBUG="1") if debug else cluster.env()
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(cluster.tmp), capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(result: subprocess.CompletedProcess[bytes], prog: str) -> None:
    lines = result.stderr.decode().splitlines()
    assert "Traceback" not in result.stderr.decode(), result.stderr
    assert lines[-1] == (f"{prog}: internal error: RuntimeError: planted bug (JOBQUEUE_DEBUG=1 shows where); "
                         "please report it"), result.stderr
    assert result.returncode == 255


JQ_MAIN = "from jobqueue.jq import exit_now, main\nexit_now(main(sys.argv[1:] or ['sh', '-c', 'echo hi']))"


def test_jq(cluster: Cluster) -> None:
    plant = "import jobqueue.caller\njobqueue.caller.caller_attributes = boom"
    one_line(run_with_bug(cluster, plant, JQ_MAIN), "jq")
    debug = run_with_bug(cluster, plant, JQ_MAIN, debug=True)
    assert debug.returncode == 255 and b"Traceback" in debug.stderr
    assert debug.stderr.decode().splitlines()[-1].endswith("RuntimeError: planted bug; please report it")


def test_jq_bug_in_a_writer_thread(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    plant = "import jobqueue.writer\njobqueue.writer.Writer._write_all = boom"
    one_line(run_with_bug(cluster, plant, JQ_MAIN), "jq")


def test_worker(cluster: Cluster) -> None:
    """The worker crashes on its first job: one line, and the job is not left behind."""
    cluster.server()
    plant = ("import jobqueue.protocol as p\n_decode = p.decode_to_worker\n"
             "def decode(data):\n    m = _decode(data)\n    return boom() if isinstance(m, p.Assign) else m\n"
             "p.decode_to_worker = decode")
    main = f"from jobqueue.cli import worker_main\nsys.exit(worker_main(['{cluster.endpoint}', '--name', 'wbug']))"
    worker = subprocess.Popen([sys.executable, "-c", f"import sys\n{BOOM}{plant}\n{main}\n"], env=cluster.env(),
                              cwd=str(cluster.tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cluster.procs.append(worker)
    cluster.wait_worker("wbug")
    jq = cluster.popen_jq("true")
    _, err = worker.communicate(timeout=30)
    one_line(subprocess.CompletedProcess(worker.args, worker.returncode, b"", err), "jobqueue-worker")
    jq.kill()


def test_server(cluster: Cluster) -> None:
    plant = "import jobqueue.broker\njobqueue.broker.Broker._on_submit = boom"
    main = f"from jobqueue.cli import server_main\nsys.exit(server_main(['{cluster.endpoint}']))"
    server = subprocess.Popen([sys.executable, "-c", f"import sys\n{BOOM}{plant}\n{main}\n"], env=cluster.env(),
                              cwd=str(cluster.tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cluster.procs.append(server)
    wait_for(lambda: cluster.status(timeout=0.5) is not None, 10, "server to answer")
    jq = cluster.popen_jq("true")
    _, err = server.communicate(timeout=30)
    one_line(subprocess.CompletedProcess(server.args, server.returncode, b"", err), "jobqueue-server")
    jq.kill()


def test_jobqueue(cluster: Cluster) -> None:
    cluster.server()
    plant = "import jobqueue.cli.control\njobqueue.cli.control._print_table = boom"
    main = f"from jobqueue.cli import main\nsys.exit(main(['status', '-s', '{cluster.endpoint}']))"
    one_line(run_with_bug(cluster, plant, main), "jobqueue status")
