"""The run directory (DESIGN.md: the run-directory contract).

- :mod:`~robsal.rundir.records`: typed records of its JSON files, one ``load``/``save`` each
  (:mod:`~robsal.rundir.schema`: their field checks and base class).
- :mod:`~robsal.rundir.arrays`: checked readers of the saliency ``.npz`` maps,
  ``metrics/per_image.csv`` and ``tune/folds.jsonl`` (same ``RecordError``).
- :mod:`~robsal.rundir.fingerprint`: the one fingerprint over the declared ``SECTIONS`` table
  and the one completeness check of a trained model.
- :mod:`~robsal.rundir.layout`: creating a run (``init_run``), what makes a folder a run, recording
  a figure in ``figures/index.json`` (``record_figure``).
- :mod:`~robsal.rundir.lock`: ``RunLock`` and ``writes_run`` (one writer per run).
- :mod:`~robsal.rundir.stages`: ``Stage``, the stage ledger and the runner ``robsal run`` uses.
"""

from robsal.rundir.arrays import read_folds, read_npz, read_per_image, read_saliency
from robsal.rundir.fingerprint import SECTIONS, fingerprint, is_complete
from robsal.rundir.layout import (
    FIGURE_INDEX,
    RUN_MARKERS,
    STAGES_FILE,
    config_from_yaml_text,
    has_results,
    init_run,
    is_run_dir,
    record_figure,
)
from robsal.rundir.lock import RunLock, writes_run
from robsal.rundir.records import (
    FigureEntry,
    FigureIndex,
    FinetuneInfo,
    Gate,
    ModelMetrics,
    ModelRecord,
    ModelRecordError,
    RecordError,
    RunInfo,
    Selection,
    StageLedger,
    StageRecord,
    Summary,
    SummaryModel,
    TuneBest,
    Verdict,
)
from robsal.rundir.stages import Stage, clear_stage, is_done, mark_done, read_stages, run_stages

__all__ = [
    "FIGURE_INDEX", "RUN_MARKERS", "SECTIONS", "STAGES_FILE", "FigureEntry", "FigureIndex", "Gate", "ModelMetrics",
    "ModelRecord", "ModelRecordError", "RecordError", "RunInfo", "RunLock", "Selection", "Stage", "StageLedger", "StageRecord", "Summary",
    "SummaryModel", "Verdict", "clear_stage", "config_from_yaml_text", "fingerprint", "has_results", "init_run",
    "is_complete", "is_done", "is_run_dir", "mark_done", "read_stages", "record_figure", "run_stages", "writes_run",
    "TuneBest", "read_folds", "read_npz", "read_per_image", "read_saliency", "FinetuneInfo",
]
