"""jq --stage at its edges, with real processes: hostile workers, server restarts
mid-transfer, and --stage together with -t, --timeout, tags, priorities, stdin,
signals, CURVE keys, --keep-workdir and the Python API's concurrency.

Every worker runs in its own mount namespace with a tmpfs over the directory
the client's files are in (see tests/support/staging.py), so nothing is shared.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from jobqueue.staging import watchclient
from tests.conftest import BIN, Cluster, free_port, wait_for
from tests.e2e.test_security import SecureCluster, keygen
from tests.support.relay import Relay
from tests.support.staging import isolated_worker, sent, stop_watcher

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                 reason="needs root and unshare for a private mount namespace"),
              pytest.mark.timeout(60)]


def files_under(top: Path, *, leaving_out: Path | None = None) -> set[str]:
    """Every path under ``top`` (symlinks not followed), but those under ``leaving_out``."""
    found = set()
    for base, dirs, names in os.walk(top):
        for name in dirs + names:
            path = os.path.join(base, name)
            if leaving_out is None or not path.startswith(f"{leaving_out}/") and path != str(leaving_out):
                found.add(path)
    return found


# --- 1. a hostile or broken worker ------------------------------------------------------------


def test_a_job_planting_symlinks_out_of_the_tree_writes_nothing_outside_dir(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    outside = cluster.tmp / "outside"
    job = (f"mkdir -p {outside} && ln -s {outside} link && echo evil > link/evil; "  # absolute, out of the tree
           "ln -s ../outside rel; "  # relative, out of the tree
           "mkdir x && ln -s .. x/up && ln -s x/up/.. chain; "  # x/up stays inside; chain leads out through it
           # sub, a directory here, cannot become a symlink: via, inside through the symlink, leads out
           "mkdir -p deep/er && rmdir sub && ln -s deep/er sub && ln -s x/up/sub/../.. via; "
           "echo fine > ok.txt; exit 3")
    before = files_under(cluster.tmp, leaving_out=project)
    result = cluster.jq("--stage", str(project), "sh", "-c", job, cwd=str(project))
    assert result.returncode == 3, result.stderr
    refused = sorted(result.stderr.decode().splitlines())
    assert refused == [f"jq: did not bring back {project}/{name}: {why}" for name, why in (
        ("chain", "symlink 'chain' -> 'x/up/..' leads outside the tree"),
        ("link", f"symlink 'link' -> '{outside}': absolute target"),
        ("rel", "symlink 'rel' -> '../outside' leads outside the tree"),
        ("sub", "Is a directory"),
        ("via", "symlink 'via' -> 'x/up/sub/../..' leads outside the tree"))], result.stderr
    assert (project / "ok.txt").read_text() == "fine\n" and os.readlink(project / "x" / "up") == ".."
    assert not any(os.path.lexists(project / name) for name in ("link", "rel", "chain", "via"))
    assert (project / "sub").is_dir() and not (project / "sub").is_symlink()
    assert files_under(cluster.tmp, leaving_out=project) == before  # nothing written outside DIR


def hostile_worker(cluster: Cluster, name: str, **rules: dict[str, str]) -> None:
    """A real worker whose results are rewritten on their way to jq (tests/support/hostile_worker.py)."""
    env = cluster.env(JOBQUEUE_TEST_HOSTILE=json.dumps(rules), PYTHONPATH=str(REPO))
    isolated_worker(cluster, name=name, program=[sys.executable, "-m", "tests.support.hostile_worker"], env=env)


def hostile_setup(cluster: Cluster, project: Path) -> tuple[Path, str]:
    """A symlink out of DIR, left out of the snapshot, and where it leads; the job makes
    the files the hostile worker renames."""
    outside = cluster.tmp / "outside"
    outside.mkdir()
    os.symlink("../outside", project / "out")
    return outside, "for f in e1 e2 e3 ok.txt; do echo $f > $f; done; ln -s ok.txt s; exit 7"


def test_a_worker_sending_back_paths_out_of_dir_is_refused_and_jq_keeps_the_jobs_code(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    outside, job = hostile_setup(cluster, project)
    hostile_worker(cluster, "evil", rename={"e1": "../../escape1", "e2": f"{cluster.tmp}/escape\n2",
                                            "e3": "out/evil"}, retarget={"s": "../outside"})
    before = files_under(cluster.tmp, leaving_out=project)
    result = cluster.jq("--stage", str(project), "--exclude", "out", "sh", "-c", job, cwd=str(project))
    assert result.returncode == 7, result.stderr
    assert sorted(result.stderr.decode().splitlines()) == [  # one line each, a newline in a name escaped
        f"jq: did not bring back '{cluster.tmp}/escape\\n2': unsafe path '{cluster.tmp}/escape\\n2'",
        f"jq: did not bring back {project}/../../escape1: unsafe path '../../escape1'",
        f"jq: did not bring back {project}/out/evil: a symlink or file is in the way",
        f"jq: did not bring back {project}/s: symlink 's' -> '../outside' leads outside the tree"], result.stderr
    assert (project / "ok.txt").read_text() == "ok.txt\n"
    assert files_under(cluster.tmp, leaving_out=project) == before and not any(outside.iterdir())
    assert sorted(os.listdir(project)) == ["a.txt", "ok.txt", "out", "sub"]


def test_a_worker_sending_bytes_that_were_not_asked_for_fails_jq_clearly(cluster: Cluster, project: Path) -> None:
    cluster.server()
    outside, job = hostile_setup(cluster, project)
    hostile_worker(cluster, "evil", rename={"e1": "../../escape1"}, redirect={"ok.txt": "e1"})
    before = files_under(cluster.tmp, leaving_out=project)
    result = cluster.jq("--stage", str(project), "--exclude", "out", "sh", "-c", job, cwd=str(project))
    assert result.returncode == 255, result.stderr  # and jq does not wait forever for the rest
    assert result.stderr.decode().splitlines() == [
        f"jq: did not bring back {project}/../../escape1: unsafe path '../../escape1'",
        "jq: the worker sent a result that was not asked for (index 0)"], result.stderr
    assert files_under(cluster.tmp, leaving_out=project) == before and not any(outside.iterdir())
    assert not (project / "ok.txt").exists()  # its bytes never came as its own
    assert not [name for name in os.listdir(project) if name.startswith(".jq-fetch")]


# --- 2. a server restart mid-transfer -----------------------------------------------------------


@pytest.fixture
def relayed(tcp_cluster: Cluster) -> Iterator[tuple[Cluster, Relay]]:
    """A server, and an isolated worker that reaches it through a relay the test can freeze."""
    port = int(tcp_cluster.endpoint.rsplit(":", 1)[1])
    tcp_cluster.server()
    relay = Relay(port)
    try:
        isolated_worker(tcp_cluster, name="w1", endpoint=relay.endpoint)
        yield tcp_cluster, relay
    finally:
        tcp_cluster.stop()
        relay.close()


def restart_server_while_frozen(cluster: Cluster, relay: Relay) -> None:
    """kill -9 the server once the relay froze mid-transfer, start it again on the same
    address, and let the worker's link go on (it finds the old server gone and reconnects)."""
    wait_for(relay.frozen.is_set, 20, "the transfer to be under way")
    server = next(proc for proc in cluster.procs if "jobqueue-server" in proc.args[0])
    server.kill()
    server.wait(timeout=5)
    cluster.procs.remove(server)
    cluster.server()
    relay.thaw()


def test_a_server_restart_while_blobs_flow_to_the_worker_loses_nothing(
        relayed: tuple[Cluster, Relay], tmp_path: Path) -> None:
    cluster, relay = relayed
    root = tmp_path / "tree"
    root.mkdir()
    big = os.urandom(12 << 20)
    (root / "big").write_bytes(big)
    for i in range(20):
        (root / f"f{i}").write_text(f"small {i}\n")
    relay.freeze_after(len(relay.recorded) + (4 << 20))  # a third of the way through the big file
    proc = cluster.popen_jq("-v", "--stage", str(root), "sh", "-c", "sha256sum big f* && echo ran > ran.txt",
                            cwd=str(root))
    restart_server_while_frozen(cluster, relay)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    local = subprocess.run("sha256sum big f*", shell=True, cwd=root, capture_output=True, check=True)
    assert out == local.stdout
    assert (root / "ran.txt").read_text() == "ran\n"
    assert sent(err)[1] > len(big)  # what was in flight when the server died was sent again


def test_a_server_restart_while_results_flow_back_brings_them_once(
        relayed: tuple[Cluster, Relay], tmp_path: Path) -> None:
    cluster, relay = relayed
    root = tmp_path / "tree"
    root.mkdir()
    (root / "seed").write_text("small\n")
    relay.freeze_after(len(relay.recorded) + (4 << 20))  # a third of the way through the result
    proc = cluster.popen_jq("-v", "--stage", str(root), "sh", "-c",
                            "head -c 12M /dev/urandom > out.bin && sha256sum out.bin", cwd=str(root))
    restart_server_while_frozen(cluster, relay)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert out == subprocess.run(["sha256sum", "out.bin"], cwd=root, capture_output=True, check=True).stdout
    assert b"brought back 1 files (12.0 MiB)" in err, err
    assert sorted(os.listdir(root)) == ["out.bin", "seed"]  # no temporary file left behind


def stage_frozen(cluster: Cluster, relay: Relay, tmp_path: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """A tree with a big file, and a staged jq writing ran.txt, its staging frozen by the relay
    a quarter of the way through."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(8 << 20))
    relay.freeze_after(len(relay.recorded) + (2 << 20))
    proc = cluster.popen_jq("--stage", str(root), "sh", "-c", "echo ran > ran.txt", cwd=str(root))
    wait_for(relay.frozen.is_set, 20, "the staging to be under way")
    return root, proc


def test_a_signal_while_the_tree_is_staged_ends_the_job_before_it_runs(
        relayed: tuple[Cluster, Relay], tmp_path: Path) -> None:
    cluster, relay = relayed
    root, proc = stage_frozen(cluster, relay, tmp_path)
    proc.send_signal(signal.SIGINT)
    relay.thaw()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and out == b"", err
    assert not (root / "ran.txt").exists()


def test_a_worker_taken_for_lost_while_staging_comes_back_and_the_job_runs_again(
        relayed: tuple[Cluster, Relay], tmp_path: Path) -> None:
    # The relay freezes the staging until the server takes the worker for lost and queues the
    # job again. Back, the worker still stages the first attempt, which the server has it kill
    # as stale: the run must end where the server hears of it, or the worker's slot stays
    # held and the job queued again never runs (jq hung until this was fixed).
    cluster, relay = relayed
    root, proc = stage_frozen(cluster, relay, tmp_path)
    wait_for(lambda: "worker-lost worker=w1" in cluster.log_text(), 10, "the server to take the worker for lost")
    relay.thaw()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (root / "ran.txt").read_text() == "ran\n"
    log = cluster.log_text()
    assert "why='stale attempt'" in log and "attempt=2" in log  # (the path this test is about was taken)


def test_a_signal_while_results_come_back_does_not_cut_them_short(
        relayed: tuple[Cluster, Relay], tmp_path: Path) -> None:
    """The job has ended: a signal has nothing left to stop, and the results all come back."""
    cluster, relay = relayed
    root = tmp_path / "tree"
    root.mkdir()
    relay.freeze_after(len(relay.recorded) + (4 << 20))
    proc = cluster.popen_jq("--stage", str(root), "sh", "-c", "head -c 12M /dev/urandom > out.bin; exit 5",
                            cwd=str(root))
    wait_for(relay.frozen.is_set, 20, "the results to be under way")
    proc.send_signal(signal.SIGINT)
    relay.thaw()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 5, err
    assert (root / "out.bin").stat().st_size == 12 << 20


# --- 3. --stage with everything else ---------------------------------------------------------------


def test_stage_with_a_terminal(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    child = pexpect.spawn(str(BIN / "jq"), ["-t", "--stage", str(project), "sh", "-c",
                                            "tty -s && echo ready; read line; echo \"$line\" > typed.txt; exit 4"],
                          env=cluster.env(), cwd=str(project), timeout=20)
    cluster.track(child.pid)
    child.expect("ready")
    child.sendline("typed at a terminal")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    assert (project / "typed.txt").read_text() == "typed at a terminal\n"


def test_stage_with_timeout_brings_back_what_the_timed_out_job_wrote(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    result = cluster.jq("--timeout", "1", "--stage", str(project), "sh", "-c",
                        "echo partial > partial.txt; exec sleep 30", cwd=str(project))
    assert result.returncode == 124, result.stderr
    assert (project / "partial.txt").read_text() == "partial\n"


def test_stage_with_tags_and_priorities(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="plain")
    isolated_worker(cluster, "--tag", "big", name="tagged")
    tagged = cluster.jq("-v", "--tag", "big", "--stage", str(project), "sh", "-c", "echo t > tagged.txt")
    assert tagged.returncode == 0 and b"started on worker tagged" in tagged.stderr, tagged.stderr
    assert (project / "tagged.txt").read_text() == "t\n"
    # the tagged worker busy: staged jobs wait, and start by priority
    blocker = cluster.popen_jq("--tag", "big", "sh", "-c", "echo busy; read line; true", stdin=subprocess.PIPE)
    assert blocker.stdout is not None and blocker.stdin is not None
    assert blocker.stdout.readline() == b"busy\n"
    waiting = []
    for queued, priority in enumerate((0, 5, 1), start=2):
        waiting.append(cluster.popen_jq("--tag", "big", "--priority", str(priority), "--stage", str(project),
                                        "sh", "-c", f"date +%s%N > started-{priority}.txt"))
        wait_for(lambda n=queued: len(cluster.jobs()) == n, 10, "the job to be queued")
    blocker.stdin.close()
    for proc in [blocker, *waiting]:
        assert proc.wait(timeout=30) == 0
    started = {priority: int((project / f"started-{priority}.txt").read_text()) for priority in (0, 1, 5)}
    assert started[5] < started[1] < started[0]


def test_stage_with_stdin_streamed_to_the_job(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    small = cluster.jq("--stage", str(project), "sh", "-c", "cat > in.txt", input=b"x\n", cwd=str(project))
    assert small.returncode == 0 and (project / "in.txt").read_bytes() == b"x\n"
    data = os.urandom(5 << 20)  # more than the window: flow control on both streams at once
    big = cluster.jq("--stage", str(project), "sh", "-c", "tee in.bin | wc -c", input=data, cwd=str(project))
    assert big.returncode == 0 and big.stdout.split() == [str(len(data)).encode()]
    assert (project / "in.bin").read_bytes() == data


def test_sigint_to_jq_kills_a_staged_job_and_what_it_wrote_comes_back(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    for job, code, made in (("echo partial > partial.txt", 130, "partial.txt"),
                            ("trap 'echo interrupted > report.txt; exit 3' INT", 3, "report.txt")):
        proc = cluster.popen_jq("--stage", str(project), "sh", "-c", f"{job}; echo ready; read line",
                                stdin=subprocess.PIPE, cwd=str(project))
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        # stdin stays open until jq ends: communicate() would close it at once, and the job's
        # `read` could then end on EOF (status 1) before the signal reaches it
        assert proc.wait(timeout=20) == code, proc.stderr.read() if proc.stderr else b""
        assert proc.stdin is not None
        proc.stdin.close()
        assert (project / made).exists()


def test_stage_with_curve_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    for name in ("server", "client", "worker"):
        assert keygen(keys / name).returncode == 0
    (keys / "clients" / "client.pub").write_bytes((keys / "client.pub").read_bytes())
    cluster = SecureCluster(tmp_path, f"tcp://127.0.0.1:{free_port()}", keys=keys)
    try:
        root = tmp_path / "project"  # the worker sees its keys, not this
        root.mkdir()
        (root / "a.txt").write_text("from the client\n")
        (root / "big").write_bytes(os.urandom(3 << 20))
        cluster.secure_server()
        isolated_worker(cluster, "--key", cluster.key("worker"), "--server-key", cluster.key("server.pub"),
                        name="w1", hide=root)
        result = cluster.jq("--stage", str(root), "sh", "-c", "cat a.txt; cp big big.copy", cwd=str(root))
        assert result.returncode == 0 and result.stdout == b"from the client\n", result.stderr
        assert (root / "big.copy").read_bytes() == (root / "big").read_bytes()
    finally:
        cluster.stop()


# --- 4. --keep-workdir ---------------------------------------------------------------------------


def test_keep_workdir_keeps_the_jobs_directory_and_says_where(cluster: Cluster, project: Path) -> None:
    cluster.server()
    keeper = isolated_worker(cluster, "--keep-workdir", "--tag", "keep", name="keeper")
    plain = isolated_worker(cluster, "--tag", "plain", name="plain")
    kept = cluster.jq("--tag", "keep", "--stage", str(project), "sh", "-c", "echo made > made.txt; pwd",
                      cwd=str(project / "sub"))
    assert kept.returncode == 0, kept.stderr
    workdir = kept.stdout.decode().strip()
    log = next(path for path in cluster.logs if path.name.startswith("worker-keeper"))
    wait_for(lambda: "workdir-kept job=" in log.read_text() and f"directory={workdir}" in log.read_text(), 10,
             "the worker to say where the directory is")
    there = Path(f"/proc/{keeper.pid}/root{workdir}")  # the worker's own view (its mount namespace)
    assert (there / "made.txt").read_text() == "made\n" and (there / ".." / "a.txt").exists()
    # without --keep-workdir the directory is removed once the results are back
    gone = cluster.jq("--tag", "plain", "--stage", str(project), "pwd")
    assert gone.returncode == 0, gone.stderr
    elsewhere = Path(f"/proc/{plain.pid}/root{gone.stdout.decode().strip()}")
    wait_for(lambda: not elsewhere.exists(), 10, "the job's directory to be removed")
    assert (there / "made.txt").exists()


# --- 5. the Python API, several staged jobs at once --------------------------------------------------


def test_an_executor_runs_several_staged_jobs_at_once(cluster: Cluster, project: Path, tmp_path: Path) -> None:
    import jobqueue

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("from the other tree\n")
    cluster.server()
    isolated_worker(cluster, "-j", "2", name="w1")
    isolated_worker(cluster, "-j", "2", name="w2")
    with jobqueue.Executor(server=cluster.endpoint) as executor:
        futures = [executor.submit(["sh", "-c", f"cat a.txt; echo {i} > out{i}.txt; echo {i} > skip{i}.txt"],
                                   stage=tree, cwd=tree, fetch=["out*.txt"], capture_output=True)
                   for i, tree in enumerate([project, other] * 4)]
        results = [future.result(timeout=30) for future in futures]
    for i, result in enumerate(results):
        tree = (project, other)[i % 2]
        assert result.returncode == 0 and result.stdout == (tree / "a.txt").read_bytes(), result
        assert (tree / f"out{i}.txt").read_text() == f"{i}\n" and not (tree / f"skip{i}.txt").exists()
    # jobqueue.run from several threads at once
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        ran = list(pool.map(lambda i: jobqueue.run(["sh", "-c", f"echo {i} > run{i}.txt"], stage=project,
                                                   cwd=project, fetch=[f"run{i}.txt"], server=cluster.endpoint),
                            range(3)))
    assert [r.returncode for r in ran] == [0, 0, 0]
    assert [(project / f"run{i}.txt").read_text() for i in range(3)] == ["0\n", "1\n", "2\n"]


def test_with_the_stage_watcher_each_edit_between_jobs_is_seen_and_the_rest_is_not_listed(
        cluster: Cluster, project: Path) -> None:
    env = {**cluster.env(), "JOBQUEUE_STAGE_WATCH": "always", "JOBQUEUE_STAGE_WATCH_IDLE": "60"}
    root = os.fsencode(project)
    cluster.server()
    isolated_worker(cluster, name="w1")
    try:
        assert cluster.jq("--stage", str(project), "true", env=env).returncode == 0  # starts the watcher
        wait_for(lambda: watchclient.ask(root, None) is not None, 20, "jq's stage watcher to answer")
        assert cluster.jq("--stage", str(project), "true", env=env).returncode == 0  # lists all, gets a token
        unchanged = cluster.jq("-v", "--stage", str(project), "cat", "a.txt", env=env)
        assert unchanged.stdout == b"from the client\n" and b"listed 0 of 2 directories" in unchanged.stderr
        (project / "a.txt").write_text("edited a moment")  # the same size, written just after a scan
        (project / "a.txt").write_text("edited a second\n")
        edited = cluster.jq("-v", "--stage", str(project), "cat", "a.txt", env=env)
        assert edited.stdout == b"edited a second\n" and b"listed 1 of 2 directories" in edited.stderr
        (project / "sub" / "deeper").mkdir()
        (project / "sub" / "deeper" / "new.txt").write_text("new\n")
        made = cluster.jq("-v", "--stage", str(project), "cat", "sub/deeper/new.txt", env=env)
        assert made.stdout == b"new\n", made.stderr
        assert b"listed 2 of 3 directories" in made.stderr  # sub and the new one
    finally:
        stop_watcher(root)


def test_a_blob_cache_that_cannot_be_opened_fails_staged_jobs_clearly_and_the_worker_goes_on(
        cluster: Cluster, project: Path) -> None:
    """The cache is opened off the worker's loop for its first staged job; when that fails,
    the jobs that waited for it fail in one line each, and plain jobs still run."""
    not_a_directory = cluster.tmp / "cache-is-a-file"
    not_a_directory.write_text("")
    cluster.server()
    cluster.worker("--cache-dir", str(not_a_directory), name="w1")
    jobs = [cluster.popen_jq("--stage", str(project), "true", stdin=subprocess.DEVNULL) for _ in range(2)]
    for job in jobs:
        out, err = job.communicate(timeout=30)
        assert job.returncode != 0
        assert b"staging failed: cannot open the worker's blob cache" in err and b"Traceback" not in err, err
    assert cluster.jq("echo", "still here").stdout == b"still here\n"
