"""The sweep's grid: cells (eps x seed), their names, and the sweep's run directory.

A sweep directory is one run directory whose models are the cells (``eps4_seed1``);
its ``config.yaml`` is the base config with ``models`` replaced by the cells.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robsal.config import Config, ModelSpec, load_run_config, validate
from robsal.errors import ConfigError
from robsal.rundir import init_run

GRID_KEYS = ("eps", "seed")
SWEEP_SUBDIR = "sweep"  # SWEEP/sweep/: cells.json, table.csv|json, optimal_eps.csv|json


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model trained with ``eps`` (paper units) and ``seed``."""

    name: str
    eps: float
    seed: int


def cell_name(eps: float, seed: int) -> str:
    return f"eps{float(eps):g}_seed{int(seed)}"


def _grid_values(key: str, raw: str) -> list:
    """The values of one ``key=v1,v2`` part, checked."""
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"grid: {key} has no values")
    try:
        conv = [float(v) for v in items] if key == "eps" else [int(v) for v in items]
    except ValueError:
        kind = "numbers" if key == "eps" else "integers"
        raise ConfigError(f"grid: {key} values must be {kind}, got {raw!r}") from None
    if len(set(conv)) != len(conv):
        raise ConfigError(f"grid: {key} lists a value twice ({raw})")
    if any(v < 0 or (key == "eps" and not np.isfinite(v)) for v in conv):
        raise ConfigError(f"grid: {key} values must be >= 0, got {raw}")
    return conv


def parse_grid(text: str, default_seed: int = 0) -> tuple[list[float], list[int]]:
    """``"eps=0,1,2;seed=0,1"`` -> ([0.0, 1.0, 2.0], [0, 1]); seed defaults to ``[default_seed]``."""
    values: dict[str, list] = {}
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"grid: {part!r} must look like eps=0,1,2 (keys: {', '.join(GRID_KEYS)})")
        key, raw = (s.strip() for s in part.split("=", 1))
        if key not in GRID_KEYS:
            raise ConfigError(f"grid: unknown key {key!r}; valid keys: {', '.join(GRID_KEYS)}")
        if key in values:
            raise ConfigError(f"grid: {key} is given twice")
        values[key] = _grid_values(key, raw)
    if "eps" not in values:
        raise ConfigError('grid: needs eps values, e.g. "eps=0,1,2,4,7;seed=0,1,2"')
    return sorted(values["eps"]), sorted(values.get("seed", [int(default_seed)]))


def make_cells(eps_values: Sequence[float], seeds: Sequence[int]) -> list[Cell]:
    """Cells in training order: eps ascending, then seed."""
    return [Cell(cell_name(e, s), float(e), int(s)) for e in eps_values for s in seeds]


def grid_cells(grid: str | tuple[Sequence[float], Sequence[int]], default_seed: int) -> list[Cell]:
    """The cells of ``grid``: ``"eps=...;seed=..."`` or (eps values, seeds)."""
    eps_values, seeds = parse_grid(grid, default_seed) if isinstance(grid, str) else (
        sorted(float(e) for e in grid[0]), sorted(int(s) for s in grid[1]))
    return make_cells(eps_values, seeds)


def sweep_config(cfg: Config, cells: Sequence[Cell]) -> Config:
    """A copy of ``cfg`` whose ``models`` are the cells."""
    out = copy.deepcopy(cfg)
    out.models = [ModelSpec(c.name, c.eps, c.seed) for c in cells]
    validate(out)
    return out


def cells_of(cfg: Config) -> list[Cell]:
    """The cells of a sweep's config (its models)."""
    return [Cell(m.name, float(m.eps), int(cfg.seed if m.seed is None else m.seed)) for m in cfg.models]


def init_sweep(cfg: Config, out: Path) -> None:
    """``init_run``, also accepting a grown grid (same config otherwise, old cells kept)."""
    if (out / "config.yaml").exists():
        old = load_run_config(out).to_dict()
        new = cfg.to_dict()
        for d in (old, new):
            d.pop("device", None)
            d.pop("threads", None)
        old_models, new_models = old.pop("models"), new.pop("models")
        if old == new and all(m in new_models for m in old_models):
            init_run(cfg, out, allow_changed=True)
            return
    # a sweep folder keeps its grid even before any cell finished: a shrunk grid is refused
    init_run(cfg, out, accept_without_results=False)

