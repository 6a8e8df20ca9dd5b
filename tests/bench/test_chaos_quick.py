"""The chaos run of real processes, short and seeded (issue 17): a server, workers
and concurrent jq clients with a ledger, with every kind of fault injected.  Zero
jobs lost, damaged, hung or run after their client was killed is the only pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_short_chaos_run_loses_damages_and_hangs_nothing() -> None:
    env = dict(os.environ, BENCH_BIN=str(Path(sys.executable).parent))
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--scenario", "random", "--seed", "11", "--jobs", "250",
         "--concurrency", "60", "--duration", "20", "--heartbeat", "0.5"],
        env=env, capture_output=True, text=True, timeout=140)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, report
    assert report["jobs"] == 250 and report["faults"] >= 4
