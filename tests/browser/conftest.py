"""Browser tests: the system Chromium (Debian's package, never a downloaded browser),
headless, driven by Playwright; one browser per module, shared by its tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("JOBQUEUE_CHROMIUM", "/usr/bin/chromium")
#: What this machine's closed network and a root user need (see .ci/run).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """A fresh profile (its own --user-data-dir) in the system Chromium."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium and chromium-driver (.ci/run does)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="jq-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1400, "height": 900}, timeout=30_000)
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


class Console:
    """Every console error and uncaught exception of one page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A new tab; the test fails if the page logged any console error."""
    tab = browser_context.new_page()
    console = Console(tab)
    yield tab
    tab.close()
    assert console.errors == [], f"console errors: {console.errors}"


DOCS = Path(__file__).resolve().parents[2] / "docs"
