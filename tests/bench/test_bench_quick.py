"""The benchmark suite's smoke mode still runs every scenario (issue 6).

Benchmarks themselves are not part of the test run (a shared machine makes
them flaky); ``bench/run --quick`` exercises every scenario's code path with
tiny sizes and fails if one crashes, so the suite does not rot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_bench_quick_runs_every_scenario(tmp_path: Path) -> None:
    report = tmp_path / "RESULTS.md"
    env = dict(os.environ, BENCH_PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "bench" / "run"), "--quick", "--output", str(report)], env=env,
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-5000:]
    text = report.read_text()
    for heading in ("## 1. Latency", "## 2. Throughput", "## 3. Broker capacity", "## 4. Streaming",
                    "## 5. Memory", "## 6. Watching", "## Targets"):
        assert heading in text
    assert "crashed" not in text


@pytest.mark.timeout(120)
def test_bench_compare_runs_two_revisions_side_by_side(tmp_path: Path) -> None:
    """bench/compare.py (issue 11's "no regression", measured in the same minutes):
    HEAD's code and the work tree's, each with its own server and worker, every scenario."""
    report = tmp_path / "COMPARE.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "HEAD", "WORKTREE", "--rounds", "1",
                             "--jobs", "20", "--latency-runs", "2", "--stream-mib", "1", "--output", str(report)],
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-5000:]
    text = report.read_text()
    for heading in ("## `jq true`", "## `jq echo hello`", "## Executor, 20 ×", "## `head -c 1 MiB"):
        assert heading in text
    assert text.count("| WORKTREE (WORKTREE) |") == 4


@pytest.mark.timeout(60)
def test_bench_compare_refuses_an_unknown_revision_in_words() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "no-such-revision-anywhere"],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 2
    assert "no-such-revision-anywhere" in result.stderr and "Traceback" not in result.stderr
