"""Typed records of the run directory's JSON files (DESIGN.md: the run-directory contract).

=============================  =====================  ==========================================
file                           record                 written by
=============================  =====================  ==========================================
``models/<name>/model.json``   :class:`ModelRecord`   ``robsal train`` (``robsal.models.save``)
``metrics/summary.json``       :class:`Summary`       ``robsal evaluate``
``stages.json``                :class:`StageLedger`   every stage runner (``robsal run``, sweeps)
``saliency/selection.json``    :class:`Selection`     ``robsal explain``
``run.json``                   :class:`RunInfo`       ``robsal run`` / ``train`` (``init_run``)
``figures/index.json``         :class:`FigureIndex`   every stage that writes figures (``record_figure``)
``tune/best.json``             :class:`TuneBest`      ``robsal tune``
``finetune`` of a model.json   :class:`FinetuneInfo`  ``robsal finetune`` (a fine-tuned model)
=============================  =====================  ==========================================

Each record has one ``load(path)`` that checks the types of the fields readers rely on
and raises one line (:class:`RecordError`) naming the file, the field and how to rebuild
the file, also for a file from an older robsal that lacks a field, and one
``save(path)`` (atomic) that writes the same JSON as the writers always have: a loaded
record keeps the file's key order and every key it does not type (``extra``), so
``save(load(f))`` rewrites ``f`` byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from robsal.io import write_json
from robsal.rundir.schema import (
    BOOL, CLASSES, DICT, INT, INT_MAP, LIST, MATRIX, NONNEG, NUM, NUM_MAP, PIXELS, RGB, RGB_POS, STR, STR_LIST,
    ModelRecordError, Record, RecordError, by_name, check, many, one, opt, read, run_of, type_name,
)

__all__ = [
    "FigureEntry", "FigureIndex", "Gate", "ModelMetrics", "ModelRecord", "ModelRecordError", "RecordError", "RunInfo",
    "Selection", "StageLedger", "StageRecord", "Summary", "SummaryModel", "TuneBest", "FinetuneInfo", "Verdict",
]


# --------------------------------------------------------------------------- models/<name>/model.json


@dataclass
class ModelMetrics(Record):
    """``metrics`` of ``model.json``: test-split accuracies (robsal.training.evaluate_model)."""

    ERROR: ClassVar[type[RecordError]] = ModelRecordError

    clean_accuracy: float | None = field(default=None, metadata=check(opt(NUM)))
    balanced_accuracy: float | None = field(default=None, metadata=check(opt(NUM)))
    per_class_accuracy: dict[str, float | None] | None = field(default=None, metadata=check(opt(NUM_MAP)))
    confusion_matrix: list[list[int]] | None = field(default=None, metadata=check(opt(MATRIX)))
    n_test: int | None = field(default=None, metadata=check(opt(INT)))
    robust_accuracy: dict[str, float] | None = field(default=None, metadata=check(opt(NUM_MAP)))  # paper eps ->
    robust_eval: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    def strongest_robust(self) -> tuple[str, float] | None:
        """(eps, accuracy) of the largest evaluated eps, or None."""
        if not self.robust_accuracy:
            return None
        return max(self.robust_accuracy.items(), key=lambda kv: float(kv[0]))


@dataclass
class ModelRecord(Record):
    """``models/<name>/model.json``: what the model is (arch, classes, normalisation, eps) and its metrics.

    ``load`` needs ``arch`` and ``classes`` (all a model directory needs to load);
    :meth:`trained` also needs ``metrics`` (what ``robsal train`` writes last), for readers
    of a run's results.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("arch", "classes")
    ERROR: ClassVar[type[RecordError]] = ModelRecordError

    arch: str = field(default="", metadata=check((lambda v: isinstance(v, str) and bool(v),
                                                    "a model name (resnet18, torchvision:<name>, timm:<name>)"),
                                                   nullable=False))
    classes: list[str] = field(default_factory=list, metadata=check(CLASSES, nullable=False))
    mean: list[float] | None = field(default=None, metadata=check(RGB, nullable=False))
    std: list[float] | None = field(default=None, metadata=check(RGB_POS, nullable=False))
    image_size: int | None = field(default=None, metadata=check(PIXELS, nullable=False))
    pretrained: bool | str | None = field(default=None, metadata=check(opt(
        (lambda v: isinstance(v, (bool, str)), "true, false or the path of the weights"))))
    name: str | None = field(default=None, metadata=check(opt(STR)))
    eps: float | None = field(default=None, metadata=check(opt(NONNEG)))  # paper units
    eps_l2: float | None = field(default=None, metadata=check(opt(NONNEG)))  # the radius trained against
    eps_scaling: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    adversary: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    seed: int | None = field(default=None, metadata=check(opt(INT)))
    tuned: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    config: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    commit: str | None = field(default=None, metadata=check(opt(STR)))
    fingerprint: str | None = field(default=None, metadata=check(opt(STR)))
    train_seconds: float | None = field(default=None, metadata=check(opt(NUM)))
    epochs: int | None = field(default=None, metadata=check(opt(INT)))
    metrics: ModelMetrics | None = field(default=None, metadata={**one(ModelMetrics), "required_value": True})
    # a model robsal did not train (robsal.models.imported): its weights file, sha256 and architecture
    imported: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    gradcam_layer: str | None = field(default=None, metadata=check(opt(STR)))  # dotted path, e.g. net.layer4
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = run_of(path, 2)
        if run is not None and path.parent.parent.name == "models":
            cmd = f"robsal train --config {run / 'config.yaml'} --out {run} --models {path.parent.name}"
            return f"re-train it with `{cmd}` or restore it"
        return "re-train or restore it"

    @classmethod
    def trained(cls, path: str | Path) -> ModelRecord:
        """:meth:`load` for a finished training: ``metrics`` must be there (else one-line error)."""
        path = Path(path)
        rec = cls.load(path)
        if rec.metrics is None:
            raise cls.ERROR(
                f"{path} lacks the key 'metrics' (it is from an older robsal version or its training did not "
                f"finish); {cls.fix(path)}"
            )
        return rec


# --------------------------------------------------------------------------- metrics/summary.json


@dataclass
class Gate(Record):
    """``gate`` of summary.json: the competence gate (robsal.metrics.gate)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("comparable",)

    comparable: bool = field(default=False, metadata=check(BOOL))
    models: list[str] | None = field(default=None, metadata=check(opt(STR_LIST)))
    reasons: list[str] | None = field(default=None, metadata=check(opt(STR_LIST)))
    min_recall: float | None = field(default=None, metadata=check(opt(NUM)))
    min_explained_per_class: int | None = field(default=None, metadata=check(opt(INT)))
    recall: dict[str, dict[str, float | None]] | None = field(
        default=None, metadata=check(opt((lambda v: isinstance(v, dict) and all(NUM_MAP[0](r) for r in v.values()),
                                            "an object of model -> class -> recall"))))
    balanced_accuracy: dict[str, float | None] | None = field(default=None, metadata=check(opt(NUM_MAP)))
    explained: dict[str, int] | None = field(default=None, metadata=check(opt(INT_MAP)))
    rule: str | None = field(default=None, metadata=check(opt(STR)))
    pairs: list[dict[str, Any]] | None = field(default=None, metadata=check(opt(LIST)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)


@dataclass
class Verdict(Record):
    """One entry of ``verdicts``: a claim about a robust/standard pair and one method."""

    claim: str | None = field(default=None, metadata=check(opt(STR)))
    robust: str | None = field(default=None, metadata=check(opt(STR)))
    standard: str | None = field(default=None, metadata=check(opt(STR)))
    method: str | None = field(default=None, metadata=check(opt(STR)))
    verdict: str | None = field(default=None, metadata=check(opt(STR)))
    line: str | None = field(default=None, metadata=check(opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The verdict's sentence (``line``), else 'claim: verdict'."""
        return self.line or f"{self.claim}: {self.verdict}"


@dataclass
class SummaryModel(Record):
    """``models.<name>`` of summary.json: eps, seed and accuracies of a compared model."""

    eps: float | None = field(default=None, metadata=check(opt(NUM)))
    seed: int | None = field(default=None, metadata=check(opt(INT)))
    clean_accuracy: float | None = field(default=None, metadata=check(opt(NUM)))
    balanced_accuracy: float | None = field(default=None, metadata=check(opt(NUM)))
    per_class_accuracy: dict[str, float | None] | None = field(default=None, metadata=check(opt(NUM_MAP)))
    has_weights: bool | None = field(default=None, metadata=check(opt(BOOL)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)


_RECORDS_LIST = (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects")


@dataclass
class Summary(Record):
    """``metrics/summary.json`` (robsal.metrics.evaluate_run): verdicts, gate, statistics.

    The parts readers decide on are typed (``gate``, ``verdicts``, ``models``); the tables
    and curves stay lists/objects of plain values.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("models", "comparable", "gate", "verdicts")

    run: str | None = field(default=None, metadata=check(opt(STR)))
    standard: str | None = field(default=None, metadata=check(opt(STR)))
    models: dict[str, SummaryModel] = field(default_factory=dict, metadata=by_name(SummaryModel))
    n_images: int | None = field(default=None, metadata=check(opt(INT)))
    comparable: bool | None = field(default=None, metadata=check(opt(BOOL)))
    gate: Gate | None = field(default=None, metadata={**one(Gate), "required_value": True})
    explained_per_class: dict[str, int] | None = field(default=None, metadata=check(opt(INT_MAP)))
    secondary_metrics: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    verdicts: list[Verdict] = field(default_factory=list, metadata=many(Verdict))
    metrics: list[dict[str, Any]] | None = field(default=None, metadata=check(opt(_RECORDS_LIST)))
    paired: list[dict[str, Any]] | None = field(default=None, metadata=check(opt(_RECORDS_LIST)))
    sanity: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    stability: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    faithfulness_curves: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    settings: dict[str, Any] | None = field(default=None, metadata=check(opt(DICT)))
    notes: list[str] | None = field(default=None, metadata=check(opt(STR_LIST)))
    seconds: float | None = field(default=None, metadata=check(opt(NUM)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = run_of(path, 1)
        return f"re-run `robsal evaluate --run {run}`" if run is not None else "re-run `robsal evaluate`"

    def headline(self, claim: str, method: str = "gradient") -> Verdict | None:
        """The first verdict of ``claim`` for ``method`` (else for any method), or None."""
        hits = [v for v in self.verdicts if v.claim == claim and v.method == method]
        hits = hits or [v for v in self.verdicts if v.claim == claim]
        return hits[0] if hits else None


# --------------------------------------------------------------------------- saliency/selection.json


@dataclass
class Selection(Record):
    """``saliency/selection.json``: how the explained images were chosen, and how many per class."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("rule", "selected")
    CORRECT: ClassVar[str] = "correct for every model"

    rule: str = field(default="", metadata=check(STR))
    models: list[str] | None = field(default=None, metadata=check(opt(STR_LIST)))
    n_per_class: int | None = field(default=None, metadata=check(opt(INT)))
    selected: dict[str, int] = field(default_factory=dict, metadata=check(INT_MAP))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = run_of(path, 1)
        return f"re-run `robsal explain --run {run}`" if run is not None else "re-run `robsal explain`"


# --------------------------------------------------------------------------- run.json


@dataclass
class RunInfo(Record):
    """``run.json``: when the run was made, from which commit, seed and config name."""

    created: str | None = field(default=None, metadata=check(opt(STR)))
    commit: str | None = field(default=None, metadata=check(opt(STR)))
    seed: int | None = field(default=None, metadata=check(opt(INT)))
    config_name: str | None = field(default=None, metadata=check(opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return "delete it; `robsal run` writes it again"


# --------------------------------------------------------------------------- figures/index.json

_RUN_PATH = (lambda v: isinstance(v, str) and bool(v) and not v.startswith("/") and ".." not in v.split("/"),
             "a path inside the run folder, like 'figures/x.png'")


@dataclass
class FigureEntry(Record):
    """One figure: its file (relative to the run folder), the report section that shows it, a caption."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("path", "section")

    path: str = field(default="", metadata=check(_RUN_PATH, nullable=False))
    section: str = field(default="figures", metadata=check(STR, nullable=False))  # a section id of report.html
    caption: str | None = field(default=None, metadata=check(opt(STR)))
    producer: str | None = field(default=None, metadata=check(opt(STR)))  # the stage that wrote it
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return FigureIndex.fix(path)


@dataclass
class FigureIndex(Record):
    """``figures/index.json``: the figures the stages wrote (PNG; a PDF beside one has its stem) and their sections.

    The report places each figure in the section its record names; a run folder without
    the file (made by an older robsal) gets its figures listed in one section.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("figures",)

    figures: list[FigureEntry] = field(default_factory=list, metadata=many(FigureEntry))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return "delete it (the report then lists every figure in one section) or re-run the stage that wrote them"

    def add(self, entry: FigureEntry) -> None:
        """Record ``entry``, replacing the record of the same file (a stage that ran again)."""
        self.figures = [f for f in self.figures if f.path != entry.path] + [entry]


# --------------------------------------------------------------------------- stages.json


@dataclass
class StageRecord(Record):
    """One finished stage: when, how long, the fingerprint it ran with, and any extra info."""

    finished: str | None = field(default=None, metadata=check(opt(STR)))
    seconds: float | None = field(default=None, metadata=check(opt(NUM)))
    fingerprint: str | None = field(default=None, metadata=check(opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return StageLedger.fix(path)


@dataclass
class StageLedger:
    """``stages.json``: stage name -> :class:`StageRecord`, in the order the stages finished."""

    stages: dict[str, StageRecord] = field(default_factory=dict)

    @staticmethod
    def fix(path: Path) -> str:
        return "delete it to re-run every stage"

    @classmethod
    def from_dict(cls, data: Any, path: str | Path) -> StageLedger:
        path = Path(path)
        if not isinstance(data, dict):
            raise RecordError(f"{path} must hold a JSON object, not {type_name(data)}; {cls.fix(path)}")
        return cls({name: StageRecord.from_dict(rec, path, where=f"{name}.") for name, rec in data.items()})

    @classmethod
    def load(cls, path: str | Path) -> StageLedger:
        path = Path(path)
        return cls.from_dict(read(path, RecordError, cls.fix(path)), path)

    def to_dict(self) -> dict[str, Any]:
        return {name: rec.to_dict() for name, rec in self.stages.items()}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def __iter__(self):  # noqa: ANN204
        return iter(self.stages)

    def __contains__(self, stage: object) -> bool:
        return stage in self.stages

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, stage: str) -> StageRecord:
        return self.stages[stage]

    def get(self, stage: str) -> StageRecord | None:
        return self.stages.get(stage)

    def is_done(self, stage: str, fp: str | None = None) -> bool:
        """Whether ``stage`` has a record (with fingerprint ``fp`` when given)."""
        rec = self.stages.get(stage)
        return rec is not None and (fp is None or rec.fingerprint == fp)


# --------------------------------------------------------------------------- tune/best.json, a model.json's finetune

_POS = (lambda v: NUM[0](v) and math.isfinite(v) and v > 0, "a number > 0")
_COUNT = (lambda v: INT[0](v) and v >= 0, "a whole number >= 0")
_BATCH = (lambda v: INT[0](v) and v >= 1, "a whole number >= 1")
_GROUPS = (lambda v: isinstance(v, list) and bool(v) and all(INT[0](g) and 1 <= g <= 5 for g in v),
           "a list of layer groups 1-5")


@dataclass
class TuneBest(Record):
    """``tune/best.json``: the tuned phase-2 learning rate and batch size (robsal.training.cv)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("lr", "batch_size")

    lr: float = field(default=0.0, metadata=check(_POS, nullable=False))
    batch_size: int = field(default=1, metadata=check(_BATCH, nullable=False))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = run_of(path, 1)
        return f"delete it or re-run `robsal tune --run {run}`" if run is not None else "delete it or re-run `robsal tune`"


@dataclass
class FinetuneInfo(Record):
    """``finetune`` of a fine-tuned model's ``model.json`` (robsal.experiments.finetune.finetune_model):
    the groups trained, epochs run, best epoch and why it stopped. ``from_dict(meta["finetune"], path)``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("groups", "epochs")

    groups: list[int] = field(default_factory=list, metadata=check(_GROUPS, nullable=False))
    epochs: int = field(default=0, metadata=check(_COUNT, nullable=False))
    best_epoch: int | None = field(default=None, metadata=check(opt(_COUNT)))
    stopped: str | None = field(default=None, metadata=check(opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return "delete the model folder; `robsal finetune` trains it again"
