"""End-to-end: jq without keys speaks ZMTP itself (no pyzmq, no msgspec loaded)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import BIN, Cluster

PROBE = """\
import sys
from jobqueue.jq import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("zmq", "msgspec", "typing", "dataclasses", "threading", "re", "collections", "functools")
               if m in sys.modules)
print("loaded:", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def test_jq_true_loads_no_heavy_module(cluster: Cluster) -> None:
    cluster.server()
    cluster.worker()
    r = subprocess.run([sys.executable, "-c", PROBE, "sh", "-c", "exit 3"], env=cluster.env(), capture_output=True,
                       timeout=30)
    assert r.returncode == 3, r.stderr
    assert r.stderr.decode().splitlines()[-1] == "loaded: ", r.stderr


def test_jq_with_output_and_input_loads_no_heavy_module_either(cluster: Cluster) -> None:
    """The writer threads are _thread's: threading (collections, functools...) cost ~3.5 ms a job."""
    cluster.server()
    cluster.worker()
    r = subprocess.run([sys.executable, "-c", PROBE, "sh", "-c", "echo out; echo err >&2; cat; exit 4"],
                       input=b"in\n", env=cluster.env(), capture_output=True, timeout=30)
    assert r.returncode == 4, r.stderr
    assert r.stdout == b"out\nin\n"
    assert r.stderr.decode().splitlines() == ["err", "loaded: "], r.stderr


def test_keyless_jq_against_a_curve_server_says_so_fast(tmp_path: Path, tcp_cluster: Cluster) -> None:
    for name in ("server", "client", "worker"):
        subprocess.run([str(BIN / "jobqueue"), "keygen", str(tmp_path / name)], check=True, capture_output=True,
                       timeout=30)
    tcp_cluster.server("--key", str(tmp_path / "server"), "--clients", str(tmp_path / "client.pub"),
                       "--workers", str(tmp_path / "worker.pub"), wait=False)
    start = time.monotonic()
    r = tcp_cluster.jq("--connect-timeout", "20", "true", timeout=30)
    assert r.returncode == 255
    assert r.stderr.startswith(b"jq: authentication failed: ") and b"--key and --server-key" in r.stderr, r.stderr
    assert time.monotonic() - start < 10
