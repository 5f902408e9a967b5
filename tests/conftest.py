"""Shared fixtures: tiny configs and (session-scoped) tiny runs made by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Test folders whose modules run with one intra-op thread: their models are tiny and gain
# nothing from more; on a shared 2-core machine 2 OpenMP threads made small ResNet passes
# up to 20x slower (1.5 s vs 0.08 s for a 24 px forward + backward of ResNet-18); the
# bit-for-bit comparisons of tests/reliability need a fixed thread count; Ray workers in
# tests/experiments use one thread too.
ONE_THREAD_FOLDERS = {"attacks", "experiments", "metrics", "reliability", "training"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """One torch thread for the modules of ONE_THREAD_FOLDERS, restored afterwards."""
    if Path(str(request.path)).parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(options)``: a 1 MiB tmpfs mounted in tmp_path (e.g. ``"size=1m"``, ``"ro,size=1m"``),
    unmounted afterwards; the test is skipped where mounting is not allowed (not root)."""
    import subprocess

    mounted = []

    def mount(options: str = "size=1m") -> Path:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True)
