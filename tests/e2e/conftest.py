"""Fixtures shared by the end-to-end test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster


@pytest.fixture
def project(cluster: Cluster) -> Path:
    """A small tree to stage (``jq --stage``): DIR/a.txt and an empty DIR/sub."""
    root = cluster.tmp / "project"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("from the client\n")
    return root
