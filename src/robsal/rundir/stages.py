"""Stages and the stage ledger (``RUN/stages.json``): skip what is done, redo what changed.

A :class:`Stage` is a named step with a function ``run(cfg, run_dir, state)``. The runner
(:func:`run_stages`) computes each stage's fingerprint from its entry of
:data:`robsal.rundir.fingerprint.SECTIONS`, skips a stage whose record in ``stages.json``
has that fingerprint, and once one stage runs, runs every later one too (their inputs
may have changed). A record is written after its stage succeeded.

A new stage of the main job: a function in its package, an entry in ``SECTIONS`` (its own
sections plus every earlier stage's) and a :class:`Stage` in ``robsal.experiments.run.STAGES``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robsal.config import Config
from robsal.io import write_json
from robsal.rundir.fingerprint import fingerprint
from robsal.rundir.layout import STAGES_FILE
from robsal.rundir.records import RecordError, StageLedger, StageRecord
from robsal.utils import say


@dataclass(frozen=True)
class Stage:
    """One step of a job: ``run(cfg, run_dir, state)``; ``enabled(cfg)`` says whether it runs at all.

    ``sections``: the key of its fingerprint in ``SECTIONS`` (default: ``name``).
    """

    name: str
    title: str
    run: Callable[[Config, Path, dict[str, Any]], Any]
    enabled: Callable[[Config], bool] = lambda cfg: True
    sections: str | None = None

    def fingerprint(self, cfg: Config) -> str:
        return fingerprint(cfg, self.sections or self.name)


def read_stages(run_dir: str | Path) -> StageLedger:
    """The run's stage ledger; empty when ``stages.json`` is absent or damaged (every stage reruns)."""
    path = Path(run_dir) / STAGES_FILE
    if not path.exists():
        return StageLedger()
    try:
        return StageLedger.load(path)
    except RecordError:
        return StageLedger()


def is_done(run_dir: str | Path, stage: str, fp: str | None = None) -> bool:
    return read_stages(run_dir).is_done(stage, fp)


def mark_done(run_dir: str | Path, stage: str, seconds: float | None = None, fp: str | None = None, **info: Any) -> None:
    ledger = read_stages(run_dir)
    ledger.stages[stage] = StageRecord(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=seconds, fingerprint=fp,
                                       extra=dict(info))
    ledger.save(Path(run_dir) / STAGES_FILE)


def clear_stage(run_dir: str | Path, stage: str) -> None:
    ledger = read_stages(run_dir)
    if ledger.stages.pop(stage, None) is not None:
        write_json(Path(run_dir) / STAGES_FILE, ledger.to_dict())


def run_stages(
    cfg: Config,
    run_dir: str | Path,
    stages: Sequence[Stage],
    state: dict[str, Any],
    *,
    force: Sequence[str] = (),
    log: Callable[[str], None] = say,
) -> None:
    """Run the enabled ``stages`` in order into ``run_dir``, skipping those done with the same fingerprint.

    A stage named in ``force`` runs again, and so does every stage after one that ran.
    """
    run_dir = Path(run_dir)
    active = [s for s in stages if s.enabled(cfg)]
    redo = False
    for k, stage in enumerate(active, 1):
        fp = stage.fingerprint(cfg)
        if not redo and stage.name not in force and is_done(run_dir, stage.name, fp):
            log(f"[{k}/{len(active)}] {stage.title}: done earlier, skipped")
            continue
        redo = True
        log(f"[{k}/{len(active)}] {stage.title} ...")
        t0 = time.perf_counter()
        stage.run(cfg, run_dir, state)
        dt = time.perf_counter() - t0
        mark_done(run_dir, stage.name, seconds=round(dt, 2), fp=fp)
        log(f"[{k}/{len(active)}] {stage.title}: done in {dt:.1f} s")
