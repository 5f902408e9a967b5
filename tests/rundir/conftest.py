"""A copy of the small records of a run made by the previous release (tests/rundir/data/tiny_old)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

OLD_RUN = Path(__file__).parent / "data" / "tiny_old"


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A writable copy of the previous release's tiny run records (no images, weights or maps)."""
    run = tmp_path / "tiny_old"
    shutil.copytree(OLD_RUN, run, ignore=shutil.ignore_patterns("README.md"))
    return run
