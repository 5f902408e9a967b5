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
