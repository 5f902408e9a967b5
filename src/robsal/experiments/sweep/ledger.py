"""Everything the sweep asks of the run directory's stage ledger and fingerprints, in one place.

Each question is one function over :mod:`robsal.rundir`: whether a cell is trained with the
current settings (:func:`cell_complete`), the fingerprints of the tune and explain/evaluate
stages (:func:`tune_fingerprint`, :func:`stage_fingerprint`; their config sections are the
``sweep_*`` entries of :data:`robsal.rundir.fingerprint.SECTIONS`), and reading/writing
``stages.json`` (:func:`stage_done`, :func:`record_stage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from robsal.config import Config
from robsal.experiments.sweep.grid import Cell
from robsal.rundir import fingerprint, is_complete, is_done, mark_done
from robsal.training.train import apply_tuned, training_fingerprint, tuned_hyperparameters


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
    return fingerprint(cfg, "sweep_tune")


def stage_fingerprint(cfg: Config, stage: Literal["explain", "evaluate"], *extra: Any) -> str:
    """Fingerprint of the sweep's ``stage`` (its config sections) and ``extra`` values (the cells, the image rule)."""
    return fingerprint(cfg, f"sweep_{stage}", *extra)


def stage_done(out: Path, stage: str, fp: str) -> bool:
    """Whether ``stages.json`` records ``stage`` finished with fingerprint ``fp``."""
    return is_done(out, stage, fp)


def record_stage(out: Path, stage: str, fp: str, seconds: float | None = None) -> None:
    """Record ``stage`` as finished in ``stages.json``."""
    mark_done(out, stage, seconds=seconds, fp=fp)
