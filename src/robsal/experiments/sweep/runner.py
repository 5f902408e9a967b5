"""``run_sweep``: the sweep as a composition of the run's stages.

grid -> data (+ one CV search) -> training of the unfinished cells (an executor: this
process or Ray) -> saliency maps of every trained cell -> metrics -> aggregate tables and
figures. Explain and evaluate are recorded in ``SWEEP/stages.json`` with a fingerprint of the
config and the list of trained cells, and redone only when either changes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robsal.config import Config
from robsal.data import prepare
from robsal.errors import ConfigError, DataError
from robsal.experiments.per_image_eps import OptimumResult
from robsal.experiments.sweep.executors import CellStatus, Executor, LocalExecutor, RayExecutor, write_status
from robsal.experiments.sweep.grid import SWEEP_SUBDIR, Cell, grid_cells, init_sweep, sweep_config
from robsal.experiments.sweep.ledger import (
    cell_complete,
    record_stage,
    stage_done,
    stage_fingerprint,
    tune_fingerprint,
)
from robsal.experiments.sweep.tables import OptimumSpec, aggregate
from robsal.metrics import evaluate_run
from robsal.rundir import RunLock
from robsal.saliency import explain_run
from robsal.training import tune
from robsal.utils import resolve_device, say


@dataclass
class SweepResult:
    out: Path
    cells: dict[str, CellStatus]
    table: pd.DataFrame | None
    optimum: OptimumResult | None

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.cells.items() if not s.ok]


def any_images(data: Any, n_per_class: int, seed: int) -> list[str]:
    """Test image ids, ``n_per_class`` per class from a seeded draw, whatever the models predict."""
    test = data.indices("test")
    if len(test) == 0:
        raise DataError("the sweep has no test images to explain; check data.test_per_class")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(len(data.classes)):
        r = test[data.labels[test] == k]
        rows.append(np.sort(rng.choice(r, min(n_per_class, len(r)), replace=False)) if len(r) else r)
    return [data.image_ids[i] for i in np.concatenate(rows).astype(np.int64)]


def make_executor(retries: int = 1, ray_address: str | None = None, ray_cpus: float = 1.0,
                  ray_gpus: float | None = None) -> Executor:
    """Ray tasks when ``ray_address`` is given, else this process."""
    if ray_address:
        return RayExecutor(ray_address, cpus=ray_cpus, gpus=ray_gpus, retries=retries)
    return LocalExecutor(retries=retries)


# --------------------------------------------------------------------------- stages


def _tune_once(cfg: Config, out: Path, data: Any, device: Any, progress: bool) -> None:
    """The CV search once for all cells (standard training; the paper reuses its result)."""
    fp = tune_fingerprint(cfg)
    if not stage_done(out, "tune", fp):
        say("tuning hyper-parameters once for all cells (standard training, CV)")
        tune(cfg, out, data, device=device, progress=progress)
        record_stage(out, "tune", fp)


def _train(cfg: Config, out: Path, data: Any, cells: Sequence[Cell], executor: Executor, *,
           device: Any, progress: bool) -> dict[str, CellStatus]:
    """Every cell's status after training the unfinished ones with ``executor``."""
    statuses = {c.name: CellStatus(c.name, c.eps, c.seed) for c in cells}
    pending = []
    for c in cells:
        if cell_complete(cfg, out, c):
            statuses[c.name].state = "done"
        else:
            pending.append(c)
    say(f"sweep: {len(cells)} cells, {len(cells) - len(pending)} finished earlier, {len(pending)} to train")
    write_status(out, statuses)
    if pending:
        executor.train(cfg, out, data, pending, statuses, device=device, progress=progress)
    return statuses


def _drop_stale_maps(out: Path, cells: Sequence[Cell], names: Sequence[str]) -> None:
    """Maps of a cell that is not trained (any more) must not enter the metrics."""
    for c in cells:
        stale = out / "saliency" / c.name
        if c.name not in names and stale.is_dir():
            shutil.rmtree(stale)


def _explain(cfg: Config, out: Path, data: Any, names: list[str], images: str, *, device: Any,
             progress: bool) -> None:
    fp = stage_fingerprint(cfg, "explain", names, images)
    if stage_done(out, "sweep_explain", fp):
        return
    say(f"saliency maps of {len(names)} cell(s) ...")
    t0 = time.perf_counter()
    ids = any_images(data, cfg.saliency.n_per_class, cfg.seed) if images == "all" else None
    try:
        explain_run(out, models=names, image_ids=ids, device=device, progress=progress, data=data, figures=False)
    except DataError as exc:
        if images == "all":
            raise
        raise DataError(f"{exc}; or choose the images regardless of correctness: images all") from None
    record_stage(out, "sweep_explain", fp, seconds=round(time.perf_counter() - t0, 2))


def _evaluate(cfg: Config, out: Path, data: Any, names: list[str], images: str, *, device: Any,
              progress: bool) -> None:
    fp = stage_fingerprint(cfg, "evaluate", names, images)
    if stage_done(out, "sweep_evaluate", fp):
        return
    say("metrics and statistics ...")
    t0 = time.perf_counter()
    evaluate_run(out, data=data, device=device, progress=progress)
    record_stage(out, "sweep_evaluate", fp, seconds=round(time.perf_counter() - t0, 2))


# --------------------------------------------------------------------------- the sweep


def run_sweep(
    cfg: Config,
    grid: str | tuple[Sequence[float], Sequence[int]],
    out: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    images: str = "correct",
    retries: int = 1,
    ray_address: str | None = None,
    ray_cpus: float = 1.0,
    ray_gpus: float | None = None,
    optimum: OptimumSpec | None = None,
    figure_method: str = "gradient",
    figures: bool = True,
    executor: Executor | None = None,
) -> SweepResult:
    """Train, explain, evaluate and aggregate every cell of ``grid`` into ``out`` (see the package doc).

    ``grid``: ``"eps=...;seed=..."`` or (eps values, seeds). ``images``: ``correct`` (test
    images every cell classifies correctly, the paper's rule) or ``all``. ``retries``: extra
    attempts of a failed cell. ``ray_address``: run the training as Ray tasks (``auto``, an
    address, or ``local`` for a fresh local instance); ``ray_cpus``/``ray_gpus``: each task's
    request (GPUs default to 1 when the cluster has GPUs and the config's device is not cpu).
    ``executor``: trains the cells instead (default: :func:`make_executor` of the arguments above).
    ``figures``: draw the sweep's figures (the tables are always written).
    """
    if images not in ("correct", "all"):
        raise ConfigError(f"images must be 'correct' or 'all', got {images!r}")
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    executor = executor or make_executor(retries, ray_address, ray_cpus, ray_gpus)
    cells = grid_cells(grid, cfg.seed)
    scfg = sweep_config(cfg, cells)
    out = Path(out)
    t_all = time.perf_counter()
    with RunLock(out):
        init_sweep(scfg, out)
        dev = resolve_device(device or scfg.device)
        data = prepare(scfg, out, progress=progress)
        if scfg.tune.enabled:
            _tune_once(scfg, out, data, dev, progress)
        statuses = _train(scfg, out, data, cells, executor, device=dev, progress=progress)
        names = [c.name for c in cells if statuses[c.name].ok]
        if not names:
            return SweepResult(out, statuses, None, None)
        _drop_stale_maps(out, cells, names)
        _explain(scfg, out, data, names, images, device=dev, progress=progress)
        _evaluate(scfg, out, data, names, images, device=dev, progress=progress)
        table, result = aggregate(out, data=data, optimum=optimum, figure_method=figure_method, figures=figures)
    say(f"sweep finished in {time.perf_counter() - t_all:.1f} s; table: {out / SWEEP_SUBDIR / 'table.csv'}")
    return SweepResult(out, statuses, table, result)
