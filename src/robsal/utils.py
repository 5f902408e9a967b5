"""Small shared helpers: devices, seeding, provenance."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

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
