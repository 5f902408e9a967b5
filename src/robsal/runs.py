"""Old import path of :mod:`robsal.rundir`, kept only for ``robsal.experiments.sweep`` and
``robsal.experiments.finetune`` until they import :mod:`robsal.rundir` (delete this file then).

``fingerprint(cfg, *sections)`` keeps its old signature here; new code calls
:func:`robsal.rundir.fingerprint` with a key of :data:`robsal.rundir.SECTIONS`.
"""

from __future__ import annotations

from robsal.config import Config
from robsal.rundir import RunLock, init_run, is_done, mark_done
from robsal.rundir.fingerprint import fingerprint as _fingerprint

__all__ = ["RunLock", "fingerprint", "init_run", "is_done", "mark_done"]


def fingerprint(cfg: Config, *sections: str) -> str:
    """Hash of the named config sections (all of them when none are named)."""
    return _fingerprint(cfg, sections or tuple(cfg.to_dict()))
