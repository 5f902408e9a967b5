"""Fixtures of the reliability tests: one CPU thread, a toy dataset, a tiny CNN, CLI subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


from ..training.conftest import TinyCNN, make_toy_data  # noqa: F401 (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]



def cli_env(cache: Path) -> dict[str, str]:
    """Environment of a ``python -m robsal`` subprocess: one thread, its own data cache."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ROBSAL_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_cli(args: list[str], cache: Path, log: Path) -> subprocess.Popen:
    """Start ``python -m robsal ARGS`` with stdout+stderr into ``log``.

    SIGINT is reset to its default first: a process started from a background job
    inherits "ignore SIGINT", and Python then installs no KeyboardInterrupt handler.
    """
    fh = open(log, "w")  # noqa: SIM115 (closed by the caller through the process' lifetime)
    return subprocess.Popen(
        [sys.executable, "-m", "robsal", *args], stdout=fh, stderr=subprocess.STDOUT, env=cli_env(cache),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), cwd=REPO,
    )
