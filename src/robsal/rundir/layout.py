"""The run directory's layout: creation, the resolved config, what makes a folder a run.

Layout (a contract; see DESIGN.md)::

    RUN/config.yaml   RUN/run.json   RUN/splits.csv   RUN/models/<name>/...
    RUN/saliency/<model>/<method>.npz   RUN/saliency/selection.json
    RUN/metrics/...   RUN/figures/... (+ figures/index.json)  RUN/report.html   RUN/stages.json   RUN/.lock
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from robsal.config import Config, from_dict, load_run_config
from robsal.errors import ConfigError
from robsal.io import write_text
from robsal.rundir.records import FigureEntry, FigureIndex, RunInfo
from robsal.utils import git_commit

STAGES_FILE = "stages.json"
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
FIGURE_INDEX = "figures/index.json"

# what every folder robsal ran in holds
RUN_MARKERS = ("config.yaml", "run.json", "stages.json", "models", "splits.csv")


def init_run(
    cfg: Config, run_dir: str | Path, *, allow_changed: bool = False, accept_without_results: bool = True
) -> Path:
    """Create ``run_dir`` and write ``config.yaml`` and ``run.json``.

    If the directory already holds a config that differs from ``cfg`` (other than the
    device and the thread count, which change speed, not results), refuse unless
    ``allow_changed``: reusing a run with another config would mix results. A folder with no
    result yet (:func:`has_results`: e.g. a first run that stopped at a wrong ``--data``)
    takes the new config, and the splits drawn for the old one are dropped, unless
    ``accept_without_results`` is False (sweeps, whose folder holds a grid).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG_FILE
    if cfg_path.exists() and not allow_changed:
        old = load_run_config(run_dir).to_dict()
        new = cfg.to_dict()
        for key in ("device", "threads"):
            old.pop(key, None)
            new.pop(key, None)
        if old != new:
            if not accept_without_results or has_results(run_dir):
                raise ConfigError(
                    f"{run_dir} was made with another config ({_first_difference(old, new)}); "
                    "use a new --out folder or the same config"
                )
            (run_dir / "splits.csv").unlink(missing_ok=True)  # drawn for the old config's data
    write_text(cfg_path, cfg.to_yaml())
    info_path = run_dir / RUN_FILE
    info = RunInfo.load(info_path) if info_path.exists() else RunInfo(created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    info.set(commit=git_commit(), seed=cfg.seed, config_name=cfg.name)
    info.save(info_path)
    return run_dir


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
    return f"{prefix}: {old!r} -> {new!r}"


def has_results(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds any finished work: a finished stage, a trained model, maps, metrics, a tuning."""
    from robsal.rundir.stages import read_stages

    run_dir = Path(run_dir)
    if read_stages(run_dir):
        return True
    return any(
        any(run_dir.glob(pattern))
        for pattern in ("models/*/model.json", "saliency/*.npz", "metrics/summary.json", "tune/best.json", "sweep/*")
    )


def config_from_yaml_text(text: str) -> Config:
    return from_dict(yaml.safe_load(text) or {})


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder that robsal has run in (it holds one of :data:`RUN_MARKERS`)."""
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in RUN_MARKERS)


def record_figure(
    run_dir: str | Path, path: str | Path, section: str, caption: str | None = None, producer: str | None = None
) -> None:
    """Add the figure ``path`` (a file inside ``run_dir``) to ``RUN/figures/index.json``.

    section:  the id of the report section that shows it (``"metrics"``, ``"saliency"``,
              ``"training"``, ...; ``"figures"`` = the section of other figures).
    caption:  one sentence saying what the figure shows; producer: the stage that wrote it.
    A figure recorded again (a stage that ran again) replaces its earlier record.
    """
    run_dir = Path(run_dir)
    rel = Path(path).resolve().relative_to(run_dir.resolve()).as_posix()  # ValueError: not inside the run
    index_path = run_dir / FIGURE_INDEX
    index = FigureIndex.load(index_path) if index_path.exists() else FigureIndex()
    index.add(FigureEntry(path=rel, section=section, caption=caption, producer=producer))
    index.save(index_path)
