"""The dashboard in a real browser: a server started with --dashboard (actions on, behind
a token), real workers and jq processes, and the system Chromium looking at the page."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DOCS
from tests.conftest import Cluster, free_port, kill_tree, wait_for

pytestmark = pytest.mark.timeout(90)


@dataclass
class Dash:
    cluster: Cluster
    url: str
    token: str


def _serving(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/api/session", timeout=2)
    except urllib.error.HTTPError as e:
        return e.code == 401  # up, and asking for its token
    except OSError:
        return False
    return False


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, browser_context: Any) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("dashboard")
    sockdir = tempfile.mkdtemp(prefix="jqd-")
    cluster = Cluster(tmp, f"ipc://{sockdir}/s")
    port = free_port()
    token_file = tmp / "token"  # does not exist: the dashboard writes a new token there
    try:
        cluster.server("--dashboard", f"127.0.0.1:{port}", "--dashboard-token-file", str(token_file),
                       "--dashboard-actions")
        cluster.worker("-j", "2", "--tag", "linux", name="main")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: token_file.exists() and _serving(url), 20, "the dashboard to serve")
        token = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        wait_for(lambda: str(token_file) in cluster.log_text(), 10, "the dashboard to say where its token is")
        assert token not in cluster.log_text()  # the server's log holds no secret
        login = browser_context.new_page()
        login.goto(f"{url}/?token={token}")  # the printed URL: sets the cookie, then drops the token
        assert login.url == url + "/"
        login.close()
        yield Dash(cluster, url, token)
    finally:
        cluster.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def _job_id(proc: subprocess.Popen[bytes]) -> str:
    """The id jq -v says on its first stderr line."""
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = re.match(r"jq: job (\w+) queued", line)
    assert match, line
    return match.group(1)


def test_overview_loads_live_without_console_errors(dash: Dash, page: Any) -> None:
    page.goto(dash.url + "/")
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("tr[data-worker='main'] .state")).to_have_text(re.compile("idle|busy"))
    expect(page.locator("#c-workers")).not_to_have_text("–")
    assert page.locator("#ch-load canvas").count() == 1  # the chart library (served by us) drew


def test_job_shows_running_then_finished_with_its_exit_code_without_reload(dash: Dash, page: Any) -> None:
    page.goto(dash.url + "/")
    expect(page.locator("#conn")).to_have_text("live")
    marker = f"mark-{os.getpid()}-exit"
    proc = dash.cluster.popen_jq("sh", "-c", f"echo {marker}; sleep 2.5; exit 3")
    row = page.locator(f"tr[data-job]:has(td.cmd:has-text('{marker}'))")
    expect(row).to_have_attribute("data-state", "running")
    expect(row).to_have_attribute("data-state", "nonzero", timeout=15_000)
    expect(row.locator("td.why")).to_have_text("exit code 3")
    assert proc.wait(timeout=10) == 3


def test_job_page_shows_live_output_with_colours_and_streams_apart(dash: Dash, page: Any) -> None:
    marker = f"live-{os.getpid()}"
    script = (f"printf '\\033[1;32m✔ compiled\\033[0m {marker} \\033[36m(12 files)\\033[0m\\n'; "
              "for i in 1 2 3 4 5; do printf 'test_%s ... \\033[32mok\\033[0m\\n' $i; done; "
              f"echo 'warning: {marker} deprecated option' >&2; "
              f"printf '\\033[31mFAILED\\033[0m test_6: expected 3, got 4\\n'; sleep 60")
    proc = dash.cluster.popen_jq("-v", "--tag", "linux", "sh", "-c", script)
    job_id = _job_id(proc)
    try:
        page.goto(f"{dash.url}/job/{job_id}")
        expect(page.locator("#output .fd1.a-32.a-b")).to_have_text("✔ compiled")
        expect(page.locator("#output .fd2")).to_contain_text(f"warning: {marker}")
        expect(page.locator("#output .fd1.a-31")).to_have_text("FAILED")
        expect(page.locator("#job-state")).to_have_attribute("data-state", "running")
        assert proc.poll() is None  # seen while the job runs
        expect(page.locator("#timeline li.started")).to_have_count(1)
        expect(page.locator("#facts")).to_contain_text("values never shown")
        assert "PATH=" not in page.locator("body").inner_text()
        page.screenshot(path=str(DOCS / "dashboard-job.png"))
        proc.send_signal(signal.SIGTERM)  # jq forwards it: the job ends, the page says so
        expect(page.locator("#result")).to_contain_text("killed by signal 15", timeout=15_000)
        assert proc.wait(timeout=10) == 143
    finally:
        kill_tree(proc.pid)


def test_cancel_button_cancels_a_queued_job_and_its_jq_exits_143(dash: Dash, page: Any) -> None:
    proc = dash.cluster.popen_jq("-v", "--tag", "nobody-has-it", "echo", "never")
    job_id = _job_id(proc)
    page.goto(dash.url + "/?state=queued")
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row.locator("td.why")).to_contain_text("no connected worker has tags nobody-has-it")
    row.locator("button[data-cancel]").click()
    assert proc.wait(timeout=15) == 143
    expect(row).to_have_count(0)  # gone from the queued jobs, without a reload
    page.select_option("#state", "finished")
    expect(page.locator(f"tr[data-job='{job_id}']")).to_have_attribute("data-state", "cancelled")


def test_worker_killed_is_shown_lost_and_its_job_requeued(dash: Dash, page: Any, tmp_path: Path) -> None:
    doomed = dash.cluster.worker("--tag", "doomed", name="doomed")
    pidfile = tmp_path / "pid"
    proc = dash.cluster.popen_jq("-v", "--tag", "doomed", "sh", "-c", f"echo $$ > {pidfile}; echo up; exec sleep 60")
    try:
        job_id = _job_id(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        page.goto(dash.url + "/")
        expect(page.locator("tr[data-worker='doomed'] .state")).to_have_text("busy")
        os.kill(doomed.pid, signal.SIGKILL)
        expect(page.locator("tr[data-worker='doomed'] .state")).to_have_text("lost", timeout=15_000)
        expect(page.locator("tr[data-worker='doomed']")).to_have_class(re.compile("gone"))
        job = page.locator(f"tr[data-job='{job_id}']")
        expect(job).to_have_attribute("data-state", "requeued")
        expect(job.locator("td.why")).to_contain_text("no connected worker has tags doomed")
    finally:
        if pidfile.exists():
            kill_tree(int(pidfile.read_text()))
        kill_tree(proc.pid)


def test_drain_button_drains_a_worker(dash: Dash, page: Any) -> None:
    worker = dash.cluster.worker("--tag", "spare", name="spare")
    page.goto(dash.url + "/")
    row = page.locator("tr[data-worker='spare']")
    expect(row.locator(".state")).to_have_text("idle")
    row.locator("button", has_text="Drain").click()
    assert worker.wait(timeout=15) == 0  # drained while idle: it exits at once
    expect(row.locator(".state")).to_have_text("left", timeout=15_000)


def test_overview_screenshot_with_jobs_of_every_kind(dash: Dash, page: Any) -> None:
    """Last in the module: the charts have points by now.  Saved for the README."""
    c = dash.cluster
    procs = [c.popen_jq("sh", "-c", f"sleep 0.{i}; exit {int(i % 5 == 0)}") for i in range(12)]
    procs += [c.popen_jq("sh", "-c", "kill -TERM $$"), c.popen_jq("--timeout", "0.2", "sleep", "5")]
    for proc in procs:
        proc.wait(timeout=30)
    waiting = [c.popen_jq("--tag", "gpu", "--priority", str(p), "python3", "train.py", f"--seed={p}")
               for p in (5, 0)]
    running = c.popen_jq("--tag", "linux", "sh", "-c", "echo building; sleep 60")
    try:
        page.goto(dash.url + "/")
        expect(page.locator("tr[data-state='running']")).to_have_count(1)
        expect(page.locator("#c-hour-pills .pill")).not_to_have_count(0)
        wait_for(lambda: page.evaluate("document.querySelectorAll('#ch-load canvas').length") == 1, 10, "charts")
        page.wait_for_timeout(2200)  # the charts catch up (pushed every second between points)
        page.screenshot(path=str(DOCS / "dashboard-overview.png"), full_page=True)
    finally:
        for proc in [*waiting, running]:
            kill_tree(proc.pid)
