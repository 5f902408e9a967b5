"""Small shared helpers: devices, seeding, provenance."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robsal.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, xpu ...: robsal has never run there
        raise ConfigError(f"device: {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available() and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is visible; use device=cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps was asked for but is not available; use device=cpu")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def git_commit() -> str | None:
    """The robsal source tree's git commit, or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def say(msg: str) -> None:
    """One progress line on stderr, flushed (stage and epoch lines; logs of cluster jobs need them)."""
    import sys

    print(msg, file=sys.stderr, flush=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with NumPy scalars made Python numbers and non-finite floats made ``None`` (JSON has no NaN).

    Dict keys become strings, tuples lists; everything else is returned as it is.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


@contextlib.contextmanager
def module_mode(module: torch.nn.Module, training: bool = False) -> Iterator[torch.nn.Module]:
    """Put ``module`` in train (``training=True``) or eval mode for the block, then restore
    the mode every submodule had before, also when the block raises.

    Submodules are restored one by one, so a model with some layers frozen in eval mode
    (BatchNorm during fine-tuning) comes back exactly as it was.
    """
    before = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, mode in before:
            m.training = mode
