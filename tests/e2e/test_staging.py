"""jq --stage against workers that truly share no file system with jq.

Each worker runs in its own mount namespace with a tmpfs over the test's
directory (``unshare --mount``; root, as in CI), so the client's files do not
exist where the job runs: without --stage a job fails (directory missing), with
--stage it runs on a snapshot and its results come back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, wait_for
from tests.support.staging import isolated_worker, sent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare for a private mount namespace")


def test_no_shared_file_system_without_stage_fails_with_stage_runs_and_results_come_back(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    plain = cluster.jq("cat", "a.txt", cwd=str(project / "sub"))
    assert plain.returncode == 255 and b"does not exist" in plain.stderr, plain.stderr
    staged = cluster.jq("--stage", str(project), "sh", "-c", "pwd; cat ../a.txt; echo made > out.txt; "
                        "mkdir -p ../build && echo obj > ../build/x.o", cwd=str(project / "sub"))
    assert staged.returncode == 0, staged.stderr
    workdir, text = staged.stdout.decode().splitlines()
    assert workdir.endswith("/sub") and not workdir.startswith(str(project)) and text == "from the client"
    assert (project / "sub" / "out.txt").read_text() == "made\n"
    assert (project / "build" / "x.o").read_text() == "obj\n"
    # the worker removes the job's directory (--keep-workdir keeps it): a later job sees only its own
    jobs = os.path.dirname(os.path.dirname(workdir))

    def only_its_own() -> bool:
        listing = cluster.jq("--stage", str(project), "sh", "-c", f"ls {jobs}")
        return listing.returncode == 0 and len(listing.stdout.split()) == 1

    wait_for(only_its_own, 10, "the finished job's directory to be removed")


MAKEFILE = """\
prog: main.o util.o
\tcc -o prog main.o util.o
%.o: %.c util.h
\tcc -c $<
"""


@pytest.mark.skipif(not shutil.which("cc") or not shutil.which("make"), reason="needs cc and make")
def test_a_c_build_compiles_once_objects_come_back_with_their_mtimes_second_make_does_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "cproject"
    src.mkdir()
    (src / "Makefile").write_text(MAKEFILE)
    (src / "util.h").write_text("int twice(int);\n")
    (src / "util.c").write_text('#include "util.h"\nint twice(int x) { return 2 * x; }\n')
    (src / "main.c").write_text('#include <stdio.h>\n#include "util.h"\nint main(void) '
                                '{ printf("%d\\n", twice(21)); return 0; }\n')
    for path in src.iterdir():  # sources older than anything the build makes
        os.utime(path, (1_600_000_000, 1_600_000_000))
    cluster.server()
    isolated_worker(cluster, name="w1")
    first = cluster.jq("-v", "--stage", str(src), "sh", "-c", "make && ./prog", cwd=str(src))
    assert first.returncode == 0, first.stderr
    assert b"cc -c main.c" in first.stdout and first.stdout.endswith(b"42\n")
    assert b"brought back 3 files" in first.stderr, first.stderr
    for name in ("main.o", "util.o", "prog"):
        assert (src / name).stat().st_mtime > 1_600_000_000
    assert os.access(src / "prog", os.X_OK)
    assert subprocess.run(["make", "-q"], cwd=src).returncode == 0  # up to date here too
    again = cluster.jq("-v", "--stage", str(src), "make", cwd=str(src))
    assert again.returncode == 0 and b"is up to date" in again.stdout, again.stdout
    assert b"brought back 0 files" in again.stderr
    assert sent(again.stderr) == (0, 0)  # the objects it made were kept on the worker: not sent back to it
    (src / "util.c").write_text('#include "util.h"\nint twice(int x) { return x + x; }\n')
    third = cluster.jq("--stage", str(src), "make", cwd=str(src))
    assert b"cc -c util.c" in third.stdout and b"main.c" not in third.stdout


def test_one_changed_file_out_of_thousands_sends_one_blob(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "many"
    for d in range(20):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (root / f"d{d}" / f"f{f}").write_text(f"file {d}/{f}\n" * 20)
    cluster.server()
    isolated_worker(cluster, name="w1")
    cold = cluster.jq("-v", "--stage", str(root), "true")
    assert cold.returncode == 0, cold.stderr
    assert sent(cold.stderr)[0] == 2000 + 21
    warm = cluster.jq("-v", "--stage", str(root), "true")
    assert sent(warm.stderr) == (0, 0)
    (root / "d7" / "f3").write_text("changed\n")
    one = cluster.jq("-v", "--stage", str(root), "sh", "-c", "cat d7/f3")
    assert one.stdout == b"changed\n"
    blobs, size = sent(one.stderr)
    assert blobs == 3  # the file, its directory, the root
    assert b"3 of them with the job" in one.stderr  # no round trip to ask for them
    assert size < 12_000  # the root lists 20 entries, d7 100: no other file's content


LISTING = r"""
import os, stat, sys
root = sys.argv[1].encode()
for base, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(dirs + files):
        path = os.path.join(base, name)
        st = os.lstat(path)
        rel = os.path.relpath(path, root)
        if stat.S_ISLNK(st.st_mode):
            what = b"link " + os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            what = b"dir %o" % stat.S_IMODE(st.st_mode)
        else:
            what = b"file %o %d %d " % (stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns) + \
                open(path, "rb").read().hex().encode()
        sys.stdout.buffer.write(rel.hex().encode() + b" " + what + b"\n")
"""


def test_links_modes_empty_dirs_every_byte_and_odd_names_arrive_and_come_back(
        cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    (root / "empty").mkdir(parents=True)
    (root / "tools").mkdir()
    odd = os.path.join(os.fsencode(root), b"sp ace\nline\xff.bin")
    with open(odd, "wb") as f:
        f.write(bytes(range(256)) * 4)
    (root / "tools" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(root / "tools" / "run.sh", 0o750)
    (root / "secret").write_text("s")
    os.chmod(root / "secret", 0o600)
    os.symlink("tools/run.sh", root / "run")
    os.symlink("../secret", root / "tools" / "up")
    (root / "listing.py").write_text(LISTING)
    cluster.server()
    isolated_worker(cluster, name="w1")
    here = subprocess.run([sys.executable, str(root / "listing.py"), str(root)], capture_output=True, check=True)
    there = cluster.jq("--stage", str(root), "sh", "-c", f"{sys.executable} listing.py . && ./run", cwd=str(root))
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout + b"ran\n"
    # and back: the job makes the same kinds of things
    job = ("mkdir -p out/empty && printf 'x\\000y' > \"out/$(printf 'n\\nl')\" && chmod 640 \"out/$(printf 'n\\nl')\" "
           "&& ln -s ../secret out/link && cp -p \"$(printf 'sp ace\\nline\\377.bin')\" out/")
    back = cluster.jq("--stage", str(root), "sh", "-c", job, cwd=str(root))
    assert back.returncode == 0, back.stderr
    assert (root / "out" / "n\nl").read_bytes() == b"x\0y" and (root / "out" / "n\nl").stat().st_mode & 0o777 == 0o640
    assert os.readlink(root / "out" / "link") == "../secret" and (root / "out" / "empty").is_dir()
    copy = os.path.join(os.fsencode(root), b"out", b"sp ace\nline\xff.bin")
    assert open(copy, "rb").read() == bytes(range(256)) * 4
    assert os.stat(copy).st_mtime_ns == os.stat(odd).st_mtime_ns  # cp -p kept it, and so did the way back


def test_gitignore_is_respected_and_git_is_left_out(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("*.log\n")
    (root / "debug.log").write_text("ignored")
    (root / "kept.txt").write_text("kept")
    cluster.server()
    isolated_worker(cluster, name="w1")
    result = cluster.jq("--stage", str(root), "sh", "-c", "ls -A", cwd=str(root))
    assert result.stdout.split() == [b".gitignore", b"kept.txt"], result.stderr
    with_git = cluster.jq("--stage", str(root), "--stage-git", "--exclude", "*.txt", "sh", "-c", "ls -A")
    assert with_git.stdout.split() == [b".git", b".gitignore"]


def test_a_job_writing_a_staged_file_in_place_does_not_change_what_the_next_job_sees(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    first = cluster.jq("--stage", str(project), "--no-fetch", "sh", "-c",
                       "printf XXXX | dd of=a.txt conv=notrunc status=none && cat a.txt")
    assert first.stdout == b"XXXX the client\n"
    second = cluster.jq("--stage", str(project), "cat", "a.txt")
    assert second.stdout == b"from the client\n"
    assert (project / "a.txt").read_text() == "from the client\n"  # --no-fetch


def test_a_local_file_edited_while_the_job_runs_is_kept(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    proc = cluster.popen_jq("--stage", str(project), "sh", "-c",
                            "echo the job > a.txt; echo the job > b.txt; echo ready; read line",
                            stdin=subprocess.PIPE, cwd=str(project))
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == b"ready\n"
    (project / "a.txt").write_text("edited here\n")
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert (project / "a.txt").read_text() == "edited here\n"
    assert (project / "b.txt").read_text() == "the job\n"
    assert proc.stderr is not None
    assert proc.stderr.read() == f"jq: kept local {project}/a.txt: changed here while the job ran\n".encode()


def test_requeue_after_kill_9_of_the_worker_stages_again_and_results_come_back_once(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    first = isolated_worker(cluster, name="w1")
    proc = cluster.popen_jq("--stage", str(project), "sh", "-c",
                            "echo attempt >> log.txt; echo ready; read line; echo done", stdin=subprocess.PIPE,
                            cwd=str(project))
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == b"ready\n"
    os.kill(first.pid, 9)
    isolated_worker(cluster, name="w2")
    assert proc.stdout.readline() == b"ready\n"  # the second attempt, on w2, from the same snapshot
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert (project / "log.txt").read_text() == "attempt\n"  # once: from the attempt that finished


def test_cache_eviction_under_cache_size(cluster: Cluster, tmp_path: Path) -> None:
    trees = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        for i in range(4):
            (root / f"f{i}").write_bytes(os.urandom(100_000))
        trees.append(root)
    cluster.server()
    isolated_worker(cluster, "--cache-size", "500K", name="w1")
    assert sent(cluster.jq("-v", "--stage", str(trees[0]), "true").stderr)[0] == 5
    assert sent(cluster.jq("-v", "--stage", str(trees[0]), "true").stderr)[0] == 0  # cached
    assert sent(cluster.jq("-v", "--stage", str(trees[1]), "true").stderr)[0] == 5  # evicts a's
    # 500 KiB holds 5 of the 100 kB files: b's four and one of a's; a's other three are sent again
    assert sent(cluster.jq("-v", "--stage", str(trees[0]), "true").stderr)[0] in (3, 4)  # (4: a's directory too)


def test_two_concurrent_staged_jobs_of_the_same_tree(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, "-j", "2", name="w1")
    assert cluster.jq("--stage", str(project), "true").returncode == 0  # a directory of that tree is parked
    procs = [cluster.popen_jq("--stage", str(project), "sh", "-c",
                              f"echo {i} > out{i}.txt; cat a.txt; read line; pwd", stdin=subprocess.PIPE,
                              cwd=str(project)) for i in range(2)]
    assert all(proc.stdout is not None and proc.stdout.readline() == b"from the client\n" for proc in procs)
    workdirs = []
    for proc in procs:  # both run at once: each in its own directory (one the parked one, one fresh)
        out, err = proc.communicate(b"go\n", timeout=30)
        assert proc.returncode == 0, err
        workdirs.append(out)
    assert workdirs[0] != workdirs[1]
    assert [(project / f"out{i}.txt").read_text() for i in range(2)] == ["0\n", "1\n"]
    wait_for(lambda: not cluster.jobs(), 5, "the jobs to be gone")


def test_the_python_api_stages_and_fetches(cluster: Cluster, project: Path) -> None:
    import jobqueue

    cluster.server()
    isolated_worker(cluster, name="w1")
    result = jobqueue.run(["sh", "-c", "cat a.txt; echo api > api.txt; echo skip > skip.log"], stage=project,
                          cwd=project, fetch=["*.txt"], capture_output=True, server=cluster.endpoint)
    assert result.returncode == 0 and result.stdout == b"from the client\n"
    assert (project / "api.txt").read_text() == "api\n" and not (project / "skip.log").exists()
    with jobqueue.Executor(server=cluster.endpoint) as executor:
        future = executor.submit(["sh", "-c", "echo ex > ex.txt"], stage=project, cwd=project)
        assert future.result().returncode == 0
    assert (project / "ex.txt").read_text() == "ex\n"


def test_staging_errors_are_clear_and_nothing_is_queued(cluster: Cluster, project: Path) -> None:
    cluster.server()
    missing = cluster.jq("--stage", str(project / "nope"), "true")
    assert missing.returncode == 255 and missing.stderr.startswith(b"jq: --stage ") and b"No such file" in \
        missing.stderr
    os.symlink("/etc/passwd", project / "passwd")
    outside = cluster.jq("--stage", str(project), "true")
    assert outside.returncode == 255 and b"points outside the staged directory" in outside.stderr
    usage = cluster.jq("--fetch", "*.o", "true")
    assert usage.returncode == 255 and b"need --stage DIR" in usage.stderr
    assert not cluster.jobs()


VANDALISE = """
printf XXXX | dd of=src/a.c conv=notrunc status=none   # in place: the same inode
echo new > new.txt && mkdir -p made/deep && echo x > made/deep/x
rm -rf docs && rm run.sh && ln -s src/a.c run.sh && mkfifo pipe
chmod 600 tools/build.sh && touch -d @0 src/b.c && chmod 700 ro && rm ro/r && chmod 500 ro
ln src/a.c hard && mv keep.txt moved.txt && pwd
"""


def test_a_parked_directory_is_reused_and_the_next_job_sees_the_pristine_snapshot(
        cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for path, text in [("src/a.c", "int a;\n"), ("src/b.c", "int b;\n"), ("docs/guide.md", "read me\n"),
                       ("tools/build.sh", "#!/bin/sh\n"), ("run.sh", "#!/bin/sh\necho run\n"), ("ro/r", "r"),
                       ("keep.txt", "keep\n")]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    os.chmod(root / "tools" / "build.sh", 0o755)
    os.chmod(root / "ro", 0o555)
    os.symlink("src/b.c", root / "link")
    (root / "empty").mkdir()
    (root / "listing.py").write_text(LISTING)
    cluster.server()
    isolated_worker(cluster, name="w1")
    here = subprocess.run([sys.executable, str(root / "listing.py"), str(root)], capture_output=True, check=True)
    first = cluster.jq("--stage", str(root), "--no-fetch", "sh", "-ec", VANDALISE, cwd=str(root))
    assert first.returncode == 0, first.stderr
    second = cluster.jq("--stage", str(root), "sh", "-c", f"{sys.executable} listing.py . && pwd", cwd=str(root))
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(here.stdout), second.stdout  # every file, mode, mtime and link as snapshotted
    assert second.stdout[len(here.stdout):] != first.stdout  # its own directory's name
    log = cluster.log_text()
    assert "workdir-parked" in log and "workdir-reused" in log and "workdir-discarded" not in log, log
    os.chmod(root / "ro", 0o755)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory the isolated worker's jobs and the test both see (not under the test's tmpfs)."""
    path = Path(tempfile.mkdtemp(prefix="jq-staging-"))
    yield path
    pid = path / "pid"
    if pid.exists():  # the job's leftover process, if it is still there
        try:
            os.kill(int(pid.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(path)


def test_a_directory_a_leftover_process_still_uses_is_discarded_not_reused(
        cluster: Cluster, project: Path, outside: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    # the job leaves a process behind (its own session: not killed with the job) working in its directory
    escape = (f"setsid sh -c 'echo $$ > {outside}/pid; until [ -e {outside}/go ]; do sleep 0.02; done; "
              f"echo tampered > a.txt; touch {outside}/done' </dev/null >/dev/null 2>&1 & "
              f"until [ -s {outside}/pid ]; do sleep 0.02; done")
    assert cluster.jq("--stage", str(project), "--no-fetch", "sh", "-c", escape).returncode == 0
    wait_for(lambda: "still uses it" in cluster.log_text(), 10, "the directory to be discarded")
    (outside / "go").touch()
    wait_for(lambda: (outside / "done").exists(), 10, "the leftover process to write")
    again = cluster.jq("--stage", str(project), "cat", "a.txt")
    assert again.stdout == b"from the client\n", cluster.log_text()


def test_a_parked_directory_changed_while_parked_is_discarded(
        cluster: Cluster, project: Path, outside: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    parked = cluster.tmp / "worker-cache" / "parked"
    # this process holds nothing of the job's directory (the worker parks it), then writes into it there
    escape = (f"setsid sh -c 'cd /; echo $$ > {outside}/pid; until [ -e {outside}/go ]; do sleep 0.02; done; "
              f"echo tampered > {parked}/$0/a.txt; touch {outside}/done' \"$(basename \"$PWD\")\" "
              f"</dev/null >/dev/null 2>&1 & until [ -s {outside}/pid ]; do sleep 0.02; done")
    assert cluster.jq("--stage", str(project), "--no-fetch", "sh", "-c", escape).returncode == 0
    wait_for(lambda: "workdir-parked" in cluster.log_text(), 10, "the directory to be parked")
    (outside / "go").touch()
    wait_for(lambda: (outside / "done").exists(), 10, "the leftover process to write")
    again = cluster.jq("--stage", str(project), "cat", "a.txt")
    assert again.stdout == b"from the client\n", cluster.log_text()
    assert "changed while it was parked" in cluster.log_text()


def test_keep_workdir_keeps_each_jobs_directory_and_parks_none(cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, "--keep-workdir", name="w1")
    first = cluster.jq("--stage", str(project), "--no-fetch", "sh", "-c", "echo changed > a.txt; pwd")
    second = cluster.jq("--stage", str(project), "sh", "-c", f"cat a.txt; cat {first.stdout.decode().strip()}/a.txt")
    assert second.stdout == b"from the client\nchanged\n", second.stderr  # the first is kept as the job left it
    assert "workdir-parked" not in cluster.log_text()
