"""`jobqueue dashboard` as a command: its refusals, its errors (as jq's), its token,
cookie and CSRF rules, seen over plain HTTP (the browser tests are in tests/browser)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cluster, free_port, wait_for
from tests.e2e.test_security import SecureCluster, secure  # noqa: F401  (the fixture)


def dashboard(cluster: Cluster, *args: str) -> subprocess.Popen[bytes]:
    return cluster.spawn([str(BIN / "jobqueue"), "dashboard", "-s", cluster.endpoint, *args], log="dashboard",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_dashboard(cluster: Cluster, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "jobqueue"), "dashboard", "-s", cluster.endpoint, *args],
                          capture_output=True, timeout=timeout, env=cluster.env())


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str],
                                                                                                str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def serving(port: int) -> bool:
    try:
        request(port, "GET", "/api/session")
    except OSError:
        return False
    return True


def test_non_loopback_listen_without_token_is_refused(cluster: Cluster) -> None:
    result = run_dashboard(cluster, "--listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 255
    assert b"refusing to serve the dashboard on 0.0.0.0" in result.stderr and b"--token-file" in result.stderr


def test_actions_need_a_token(cluster: Cluster) -> None:
    result = run_dashboard(cluster, "--actions")
    assert result.returncode == 255 and b"--actions needs --token-file" in result.stderr


def test_unreachable_server_is_the_same_error_as_jq(cluster: Cluster) -> None:
    start = time.monotonic()
    result = run_dashboard(cluster, "--connect-timeout", "1", "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 255 and time.monotonic() - start < 10
    assert result.stderr.startswith(b"jobqueue dashboard: cannot reach the server at")
    assert b"Traceback" not in result.stderr


@pytest.fixture
def guarded(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A dashboard with actions, behind a token it wrote itself."""
    cluster.server()
    token_file = tmp_path / "token"
    port = free_port()
    proc = dashboard(cluster, "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file), "--actions")
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    token = token_file.read_text().strip()
    assert f"http://127.0.0.1:{port}/?token={token}" in line, line
    assert token_file.stat().st_mode & 0o777 == 0o600
    wait_for(lambda: serving(port), 10, "the dashboard to serve")
    yield port, token


def test_token_then_cookie_then_csrf_checked_posts(guarded: tuple[int, str]) -> None:
    port, token = guarded
    status, _, body = request(port, "GET", "/")
    assert status == 401 and "token" in body
    status, _, _ = request(port, "GET", "/?token=wrong")
    assert status == 403
    status, headers, _ = request(port, "GET", f"/job/abc?token={token}")
    assert status == 303 and headers["location"] == "/job/abc"  # the token leaves the address bar
    cookie = headers["set-cookie"].split(";")[0]
    assert token not in cookie and "httponly" in headers["set-cookie"].lower()
    assert "samesite=strict" in headers["set-cookie"].lower()
    status, _, body = request(port, "GET", "/api/session", {"Cookie": cookie})
    session: dict[str, Any] = json.loads(body)
    assert status == 200 and session["actions"] is True and session["csrf"]
    # a POST without the CSRF token, or from another site, does nothing
    status, _, body = request(port, "POST", "/api/jobs/nosuch/cancel", {"Cookie": cookie})
    assert status == 403 and "CSRF" in body
    status, _, body = request(port, "POST", "/api/jobs/nosuch/cancel",
                              {"Cookie": cookie, "X-CSRF-Token": session["csrf"], "Origin": "http://evil.example"})
    assert status == 403 and "cross-site" in body
    status, _, body = request(port, "POST", "/api/jobs/nosuch/cancel",
                              {"Cookie": cookie, "X-CSRF-Token": session["csrf"],
                               "Origin": f"http://127.0.0.1:{port}"})
    assert status == 404 and json.loads(body)["unknown"] == ["nosuch"]  # it reached the server


def test_without_token_only_loopback_host_names_and_no_actions(cluster: Cluster) -> None:
    cluster.server()
    port = free_port()
    dashboard(cluster, "--listen", f"127.0.0.1:{port}")
    wait_for(lambda: serving(port), 15, "the dashboard to serve")
    status, _, body = request(port, "GET", "/api/session")
    assert status == 200 and json.loads(body)["actions"] is False
    status, _, _ = request(port, "GET", "/", {"Host": "attacker.example"})  # DNS rebinding
    assert status == 403
    status, _, body = request(port, "POST", "/api/workers/w1/drain")
    assert status == 403 and "actions are off" in body
    status, _, body = request(port, "GET", "/static/uplot/uPlot.iife.min.js")
    assert status == 200 and "uPlot" in body  # served from the package: works offline


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_server_dashboard_stops_with_the_server(cluster: Cluster, how: signal.Signals) -> None:
    port = free_port()
    server = cluster.server("--dashboard", f"127.0.0.1:{port}")
    wait_for(lambda: serving(port), 15, "the dashboard to serve")
    server.send_signal(how)
    assert server.wait(timeout=10) == (0 if how == signal.SIGTERM else -how)
    wait_for(lambda: not serving(port), 10, "the dashboard to stop")


def first_event(port: int) -> dict[str, Any]:
    """The first server-sent event of the overview's stream."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/stream")
        response = conn.getresponse()
        while True:
            line = response.readline().decode()
            if line.startswith("data: "):
                return dict(json.loads(line[6:]))
    finally:
        conn.close()


def test_dashboard_follows_a_restarted_server(cluster: Cluster) -> None:
    server = cluster.server()
    port = free_port()
    dashboard(cluster, "--listen", f"127.0.0.1:{port}")
    wait_for(lambda: serving(port), 15, "the dashboard to serve")
    before = first_event(port)["overview"]
    assert before["connected"] and before["server"]
    server.kill()
    server.wait()
    wait_for(lambda: not first_event(port)["overview"]["connected"], 15, "the page to say the server is gone")
    cluster.server()
    wait_for(lambda: first_event(port)["overview"]["server"] not in ("", before["server"])
             and first_event(port)["overview"]["connected"], 20, "the dashboard to watch the new server")


def test_server_dashboard_with_curve_keys(secure: SecureCluster) -> None:  # noqa: F811
    port = free_port()
    server_options = ["--key", secure.key("server"), "--clients", str(secure.keys / "clients"),
                      "--workers", secure.key("worker.pub"), "--dashboard", f"127.0.0.1:{port}"]
    refused = subprocess.run([str(BIN / "jobqueue-server"), secure.endpoint, *server_options],
                             capture_output=True, timeout=20, env=secure.env())
    assert refused.returncode == 255 and b"--dashboard-key" in refused.stderr
    server = secure.server(*server_options, "--dashboard-key", secure.key("client"))
    secure.worker_as("worker", name="kw")
    wait_for(lambda: serving(port), 15, "the dashboard to serve")
    wait_for(lambda: [w["name"] for w in first_event(port)["workers"]["rows"]] == ["kw"], 15, "the worker shown")
    server.terminate()
    assert server.wait(timeout=10) == 0
    wait_for(lambda: not serving(port), 10, "the dashboard to stop")
