"""jq --stage at its edges, with real processes: hostile workers, server restarts
mid-transfer, and --stage together with -t, --timeout, tags, priorities, stdin,
signals, CURVE keys, --keep-workdir and the Python API's concurrency.

Every worker runs in its own mount namespace with a tmpfs over the directory
the client's files are in (see tests/support/staging.py), so nothing is shared.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.support.staging import isolated_worker

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
