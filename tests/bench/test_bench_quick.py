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
