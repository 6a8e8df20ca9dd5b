"""jq --stage at its edges, with real processes: hostile workers, server restarts
mid-transfer, and --stage together with -t, --timeout, tags, priorities, stdin,
signals, CURVE keys, --keep-workdir and the Python API's concurrency.

Every worker runs in its own mount namespace with a tmpfs over the directory
the client's files are in (see tests/support/staging.py), so nothing is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.support.staging import isolated_worker

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


@pytest.fixture
def project(cluster: Cluster) -> Path:
    root = cluster.tmp / "project"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("from the client\n")
    return root


# --- 1. a hostile or broken worker ------------------------------------------------------------


def test_a_job_planting_symlinks_out_of_the_tree_writes_nothing_outside_dir(
        cluster: Cluster, project: Path) -> None:
    cluster.server()
    isolated_worker(cluster, name="w1")
    outside = cluster.tmp / "outside"
    job = (f"mkdir -p {outside} && ln -s {outside} link && echo evil > link/evil; "  # absolute, out of the tree
           "ln -s ../outside rel; "  # relative, out of the tree
           "mkdir x && ln -s .. x/up && ln -s x/up/.. chain; "  # x/up stays inside; chain leads out through it
           "echo fine > ok.txt; exit 3")
    before = files_under(cluster.tmp, leaving_out=project)
    result = cluster.jq("--stage", str(project), "sh", "-c", job, cwd=str(project))
    assert result.returncode == 3, result.stderr
    refused = sorted(result.stderr.decode().splitlines())
    assert refused == [f"jq: did not bring back {project}/{name}: {why}" for name, why in (
        ("chain", "symlink 'chain' -> 'x/up/..' leads outside the tree"),
        ("link", f"symlink 'link' -> '{outside}': absolute target"),
        ("rel", "symlink 'rel' -> '../outside' leads outside the tree"))], result.stderr
    assert (project / "ok.txt").read_text() == "fine\n" and os.readlink(project / "x" / "up") == ".."
    assert not any(os.path.lexists(project / name) for name in ("link", "rel", "chain"))
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
