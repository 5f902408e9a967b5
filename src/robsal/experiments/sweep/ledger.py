"""Everything the sweep asks of the run directory's stage ledger and fingerprints, in one place.

Each question is one function, so that moving to a shared run-directory module changes one
line each: whether a cell is trained with the current settings (:func:`cell_complete`), the
fingerprints of the tune and explain/evaluate stages (:func:`tune_fingerprint`,
:func:`stage_fingerprint`), and reading/writing ``stages.json`` (:func:`stage_done`,
:func:`record_stage`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robsal.config import Config
from robsal.experiments.sweep.grid import Cell
from robsal.runs import fingerprint, is_done, mark_done
from robsal.training.train import apply_tuned, is_complete, training_fingerprint, tuned_hyperparameters

# config sections that determine the trained cells (explain and evaluate add theirs)
TRAIN_SECTIONS = ("seed", "data", "augment", "model", "train", "adversary", "models", "tune", "robustness")


def tuned_training(cfg: Config, out: Path) -> tuple[Config, dict[str, Any] | None]:
    """The config the cells train with (the tuned lr and batch size applied) and the tuning."""
    tuned = tuned_hyperparameters(out)
    return apply_tuned(cfg, tuned), tuned


def cell_complete(cfg: Config, out: Path, cell: Cell) -> bool:
    """Whether the cell's model is trained with the sweep's current settings."""
    cfg_t, _ = tuned_training(cfg, out)
    return is_complete(out / "models" / cell.name, training_fingerprint(cfg_t, cfg_t.model_spec(cell.name)))


def tune_fingerprint(cfg: Config) -> str:
    """Fingerprint of the one CV search of a sweep."""
    return fingerprint(cfg, "data", "model", "train", "tune")


def stage_fingerprint(cfg: Config, sections: Sequence[str], *extra: Any) -> str:
    """Fingerprint of the config ``sections`` and ``extra`` values (the cells, the image rule)."""
    base = fingerprint(cfg, *sections)
    return hashlib.sha256(json.dumps([base, *extra], default=str).encode()).hexdigest()[:16]


def stage_done(out: Path, stage: str, fp: str) -> bool:
    """Whether ``stages.json`` records ``stage`` finished with fingerprint ``fp``."""
    return is_done(out, stage, fp)


def record_stage(out: Path, stage: str, fp: str, seconds: float | None = None) -> None:
    """Record ``stage`` as finished in ``stages.json``."""
    mark_done(out, stage, seconds=seconds, fp=fp)
