"""Shared fixtures: tiny configs and (session-scoped) tiny runs made by the tests themselves."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from robsal.config import load_config

    return load_config("tiny", ["device=cpu"])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A complete ``robsal run --config tiny`` run directory, made once per test session."""
    from robsal.config import load_config
    from robsal.experiments.run import run_pipeline

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    run_pipeline(load_config("tiny", ["device=cpu"]), run_dir, progress=False)
    return run_dir
