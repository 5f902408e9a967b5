"""Typed records of the run directory's JSON files (DESIGN.md: the run-directory contract).

=============================  =====================  ==========================================
file                           record                 written by
=============================  =====================  ==========================================
``models/<name>/model.json``   :class:`ModelRecord`   ``robsal train`` (``robsal.models.save``)
``metrics/summary.json``       :class:`Summary`       ``robsal evaluate``
``stages.json``                :class:`StageLedger`   every stage runner (``robsal run``, sweeps)
``saliency/selection.json``    :class:`Selection`     ``robsal explain``
``run.json``                   :class:`RunInfo`       ``robsal run`` / ``train`` (``init_run``)
=============================  =====================  ==========================================

Each record has one ``load(path)`` that checks the types of the fields readers rely on
and raises one line (:class:`RecordError`) naming the file, the field and how to rebuild
the file, also for a file from an older robsal that lacks a field, and one
``save(path)`` (atomic) that writes the same JSON as the writers always have: a loaded
record keeps the file's key order and every key it does not type (``extra``), so
``save(load(f))`` rewrites ``f`` byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from robsal.errors import CheckpointError, UserError
from robsal.io import write_json

# --------------------------------------------------------------------------- errors


class RecordError(UserError):
    """A run-directory record that is damaged, hand-edited or from an older robsal (one line)."""


class ModelRecordError(RecordError, CheckpointError):
    """A ``model.json`` that cannot be used (also a :class:`~robsal.errors.CheckpointError`)."""


# --------------------------------------------------------------------------- field checks
# (predicate, what the field must be) pairs, used in ``field(metadata={"check": ...})``


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _opt(check: tuple) -> tuple:
    pred, want = check
    return (lambda v: v is None or pred(v), f"{want} or null")


STR = (lambda v: isinstance(v, str), "a string")
BOOL = (lambda v: isinstance(v, bool), "true or false")
INT = (_is_int, "a whole number")
NUM = (_is_num, "a number")
NONNEG = (lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "a number >= 0")
DICT = (lambda v: isinstance(v, dict), "an object")
LIST = (lambda v: isinstance(v, list), "a list")
STR_LIST = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
NUM_MAP = (lambda v: isinstance(v, dict) and all(x is None or _is_num(x) for x in v.values()),
           "an object of numbers")
INT_MAP = (lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()), "an object of whole numbers")
CLASSES = (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) and c for c in v)
           and len(set(v)) == len(v), "a list of at least two distinct class names")
RGB = (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_num(x) and math.isfinite(x) for x in v),
       "a list of 3 numbers")
RGB_POS = (lambda v: RGB[0](v) and all(x > 0 for x in v), "a list of 3 numbers > 0")
PIXELS = (lambda v: _is_int(v) and 1 <= v <= 8192, "a whole number of pixels")
MATRIX = (lambda v: isinstance(v, list) and all(isinstance(r, list) and all(_is_num(x) for x in r) for r in v),
          "a list of rows of numbers")


def _check(check: tuple, *, nullable: bool = True) -> dict[str, Any]:
    return {"check": check, "required_value": not nullable}


def _one(record: type) -> dict[str, Any]:
    return {"record": record}


def _many(record: type) -> dict[str, Any]:
    return {"records": record}


def _by_name(record: type) -> dict[str, Any]:
    return {"record_map": record}


# --------------------------------------------------------------------------- the base


def _plain(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass
class _Record:
    """Shared ``from_dict``/``to_dict``/``load``/``save`` of the records below.

    Typed fields are the dataclass fields; ``REQUIRED`` lists those a file must have.
    ``extra`` keeps every key the record does not type, and ``keys`` the file's key order;
    ``to_dict`` writes the keys in that order (a record made in code: the fields' order),
    then typed fields that were absent but are now set, then new ``extra`` keys.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    ERROR: ClassVar[type[RecordError]] = RecordError
    WRITER: ClassVar[str] = "robsal"  # the command that rewrites the file (for the message)

    @classmethod
    def fix(cls, path: Path) -> str:
        return f"rebuild it with `{cls.WRITER}`"

    @classmethod
    def _typed(cls) -> dict[str, Any]:
        return {f.name: f for f in fields(cls) if f.name not in ("extra", "keys")}

    @classmethod
    def from_dict(cls, data: Any, path: str | Path, *, fix: str | None = None, where: str = "") -> Any:
        """The record of ``data`` (the parsed JSON of ``path``); :class:`RecordError` if it does not fit."""
        path = Path(path)
        fix = fix or cls.fix(path)
        if not isinstance(data, dict):
            what = f"{path}: {where.rstrip('.')}" if where else str(path)
            raise cls.ERROR(f"{what} must hold a JSON object, not {_type_name(data)}; {fix}")
        for key in cls.REQUIRED:
            if key not in data:
                raise cls.ERROR(
                    f"{path} lacks the key {where + key!r} (it is from an older robsal version or damaged); {fix}"
                )
        typed = cls._typed()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            f = typed.get(key)
            if f is None:
                extra[key] = value
                continue
            values[key] = cls._convert(f, value, path, fix, where + key)
        obj = cls(**values, extra=extra)
        obj.keys = list(data)
        return obj

    @classmethod
    def _convert(cls, f: Any, value: Any, path: Path, fix: str, name: str) -> Any:
        meta = f.metadata
        if value is None:
            if meta.get("required_value"):
                raise cls.ERROR(f"{path}: {name} must not be null (the file was edited or damaged); {fix}")
            return None
        if "record" in meta:
            return meta["record"].from_dict(value, path, fix=fix, where=name + ".")
        if "records" in meta or "record_map" in meta:
            if not isinstance(value, list if "records" in meta else dict):
                want = "a list" if "records" in meta else "an object"
                raise cls.ERROR(f"{path}: {name} must be {want} (the file was edited or damaged); {fix}")
            if "records" in meta:
                return [meta["records"].from_dict(v, path, fix=fix, where=f"{name}[{i}].") for i, v in enumerate(value)]
            return {k: meta["record_map"].from_dict(v, path, fix=fix, where=f"{name}.{k}.") for k, v in value.items()}
        pred, want = meta.get("check", (lambda v: True, ""))
        if not pred(value):
            raise cls.ERROR(f"{path}: {name} must be {want} (the file was edited or damaged); {fix}")
        return value

    def to_dict(self) -> dict[str, Any]:
        typed = self._typed()
        order = self.keys if self.keys is not None else list(typed)
        out: dict[str, Any] = {}
        for key in order:
            if key in typed:
                out[key] = _plain(getattr(self, key))
            elif key in self.extra:
                out[key] = _plain(self.extra[key])
        for key in typed:
            if key not in out and getattr(self, key) is not None:
                out[key] = _plain(getattr(self, key))
        for key, value in self.extra.items():
            if key not in out:
                out[key] = _plain(value)
        return out

    def set(self, **values: Any) -> None:
        """Set fields (typed ones as attributes, others in ``extra``), keeping a loaded file's key order."""
        typed = self._typed()
        for key, value in values.items():
            if key in typed:
                setattr(self, key, value)
            else:
                self.extra[key] = value
            if self.keys is not None and key not in self.keys:
                self.keys.append(key)

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Read and check ``path``; one-line :class:`RecordError` naming the file, field and fix."""
        path = Path(path)
        return cls.from_dict(_read(path, cls.ERROR, cls.fix(path)), path)

    def save(self, path: str | Path) -> None:
        """Write the record to ``path`` atomically (same JSON as the writers have always made)."""
        write_json(path, self.to_dict())


def _type_name(v: Any) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if _is_num(v) else type(v).__name__)


def _read(path: Path, error: type[RecordError], fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None


def _run_of(path: Path, depth: int) -> Path | None:
    """The run folder ``depth`` levels above ``path`` (None when the path is not inside one)."""
    parents = path.parents
    return parents[depth] if len(parents) > depth else None


# --------------------------------------------------------------------------- models/<name>/model.json


@dataclass
class ModelMetrics(_Record):
    """``metrics`` of ``model.json``: test-split accuracies (robsal.training.evaluate_model)."""

    ERROR: ClassVar[type[RecordError]] = ModelRecordError

    clean_accuracy: float | None = field(default=None, metadata=_check(_opt(NUM)))
    balanced_accuracy: float | None = field(default=None, metadata=_check(_opt(NUM)))
    per_class_accuracy: dict[str, float | None] | None = field(default=None, metadata=_check(_opt(NUM_MAP)))
    confusion_matrix: list[list[int]] | None = field(default=None, metadata=_check(_opt(MATRIX)))
    n_test: int | None = field(default=None, metadata=_check(_opt(INT)))
    robust_accuracy: dict[str, float] | None = field(default=None, metadata=_check(_opt(NUM_MAP)))  # paper eps ->
    robust_eval: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    def strongest_robust(self) -> tuple[str, float] | None:
        """(eps, accuracy) of the largest evaluated eps, or None."""
        if not self.robust_accuracy:
            return None
        return max(self.robust_accuracy.items(), key=lambda kv: float(kv[0]))


@dataclass
class ModelRecord(_Record):
    """``models/<name>/model.json``: what the model is (arch, classes, normalisation, eps) and its metrics.

    ``load`` needs ``arch`` and ``classes`` (all a model directory needs to load);
    :meth:`trained` also needs ``metrics`` (what ``robsal train`` writes last), for readers
    of a run's results.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("arch", "classes")
    ERROR: ClassVar[type[RecordError]] = ModelRecordError

    arch: str = field(default="", metadata=_check((lambda v: isinstance(v, str) and bool(v),
                                                    "a torchvision model name"), nullable=False))
    classes: list[str] = field(default_factory=list, metadata=_check(CLASSES, nullable=False))
    mean: list[float] | None = field(default=None, metadata=_check(RGB, nullable=False))
    std: list[float] | None = field(default=None, metadata=_check(RGB_POS, nullable=False))
    image_size: int | None = field(default=None, metadata=_check(PIXELS, nullable=False))
    pretrained: bool | str | None = field(default=None, metadata=_check(_opt(
        (lambda v: isinstance(v, (bool, str)), "true, false or the path of the weights"))))
    name: str | None = field(default=None, metadata=_check(_opt(STR)))
    eps: float | None = field(default=None, metadata=_check(_opt(NONNEG)))  # paper units
    eps_l2: float | None = field(default=None, metadata=_check(_opt(NONNEG)))  # the radius trained against
    eps_scaling: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    adversary: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    seed: int | None = field(default=None, metadata=_check(_opt(INT)))
    tuned: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    config: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    commit: str | None = field(default=None, metadata=_check(_opt(STR)))
    fingerprint: str | None = field(default=None, metadata=_check(_opt(STR)))
    train_seconds: float | None = field(default=None, metadata=_check(_opt(NUM)))
    epochs: int | None = field(default=None, metadata=_check(_opt(INT)))
    metrics: ModelMetrics | None = field(default=None, metadata={**_one(ModelMetrics), "required_value": True})
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = _run_of(path, 2)
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
class Gate(_Record):
    """``gate`` of summary.json: the competence gate (robsal.metrics.gate)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("comparable",)

    comparable: bool = field(default=False, metadata=_check(BOOL))
    models: list[str] | None = field(default=None, metadata=_check(_opt(STR_LIST)))
    reasons: list[str] | None = field(default=None, metadata=_check(_opt(STR_LIST)))
    min_recall: float | None = field(default=None, metadata=_check(_opt(NUM)))
    min_explained_per_class: int | None = field(default=None, metadata=_check(_opt(INT)))
    recall: dict[str, dict[str, float | None]] | None = field(
        default=None, metadata=_check(_opt((lambda v: isinstance(v, dict) and all(NUM_MAP[0](r) for r in v.values()),
                                            "an object of model -> class -> recall"))))
    balanced_accuracy: dict[str, float | None] | None = field(default=None, metadata=_check(_opt(NUM_MAP)))
    explained: dict[str, int] | None = field(default=None, metadata=_check(_opt(INT_MAP)))
    rule: str | None = field(default=None, metadata=_check(_opt(STR)))
    pairs: list[dict[str, Any]] | None = field(default=None, metadata=_check(_opt(LIST)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)


@dataclass
class Verdict(_Record):
    """One entry of ``verdicts``: a claim about a robust/standard pair and one method."""

    claim: str | None = field(default=None, metadata=_check(_opt(STR)))
    robust: str | None = field(default=None, metadata=_check(_opt(STR)))
    standard: str | None = field(default=None, metadata=_check(_opt(STR)))
    method: str | None = field(default=None, metadata=_check(_opt(STR)))
    verdict: str | None = field(default=None, metadata=_check(_opt(STR)))
    line: str | None = field(default=None, metadata=_check(_opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The verdict's sentence (``line``), else 'claim: verdict'."""
        return self.line or f"{self.claim}: {self.verdict}"


@dataclass
class SummaryModel(_Record):
    """``models.<name>`` of summary.json: eps, seed and accuracies of a compared model."""

    eps: float | None = field(default=None, metadata=_check(_opt(NUM)))
    seed: int | None = field(default=None, metadata=_check(_opt(INT)))
    clean_accuracy: float | None = field(default=None, metadata=_check(_opt(NUM)))
    balanced_accuracy: float | None = field(default=None, metadata=_check(_opt(NUM)))
    per_class_accuracy: dict[str, float | None] | None = field(default=None, metadata=_check(_opt(NUM_MAP)))
    has_weights: bool | None = field(default=None, metadata=_check(_opt(BOOL)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)


_RECORDS_LIST = (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects")


@dataclass
class Summary(_Record):
    """``metrics/summary.json`` (robsal.metrics.evaluate_run): verdicts, gate, statistics.

    The parts readers decide on are typed (``gate``, ``verdicts``, ``models``); the tables
    and curves stay lists/objects of plain values.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("models", "comparable", "gate", "verdicts")

    run: str | None = field(default=None, metadata=_check(_opt(STR)))
    standard: str | None = field(default=None, metadata=_check(_opt(STR)))
    models: dict[str, SummaryModel] = field(default_factory=dict, metadata=_by_name(SummaryModel))
    n_images: int | None = field(default=None, metadata=_check(_opt(INT)))
    comparable: bool | None = field(default=None, metadata=_check(_opt(BOOL)))
    gate: Gate | None = field(default=None, metadata={**_one(Gate), "required_value": True})
    explained_per_class: dict[str, int] | None = field(default=None, metadata=_check(_opt(INT_MAP)))
    secondary_metrics: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    verdicts: list[Verdict] = field(default_factory=list, metadata=_many(Verdict))
    metrics: list[dict[str, Any]] | None = field(default=None, metadata=_check(_opt(_RECORDS_LIST)))
    paired: list[dict[str, Any]] | None = field(default=None, metadata=_check(_opt(_RECORDS_LIST)))
    sanity: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    stability: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    faithfulness_curves: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    settings: dict[str, Any] | None = field(default=None, metadata=_check(_opt(DICT)))
    notes: list[str] | None = field(default=None, metadata=_check(_opt(STR_LIST)))
    seconds: float | None = field(default=None, metadata=_check(_opt(NUM)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = _run_of(path, 1)
        return f"re-run `robsal evaluate --run {run}`" if run is not None else "re-run `robsal evaluate`"

    def headline(self, claim: str, method: str = "gradient") -> Verdict | None:
        """The first verdict of ``claim`` for ``method`` (else for any method), or None."""
        hits = [v for v in self.verdicts if v.claim == claim and v.method == method]
        hits = hits or [v for v in self.verdicts if v.claim == claim]
        return hits[0] if hits else None


# --------------------------------------------------------------------------- saliency/selection.json


@dataclass
class Selection(_Record):
    """``saliency/selection.json``: how the explained images were chosen, and how many per class."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("rule", "selected")
    CORRECT: ClassVar[str] = "correct for every model"

    rule: str = field(default="", metadata=_check(STR))
    models: list[str] | None = field(default=None, metadata=_check(_opt(STR_LIST)))
    n_per_class: int | None = field(default=None, metadata=_check(_opt(INT)))
    selected: dict[str, int] = field(default_factory=dict, metadata=_check(INT_MAP))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        run = _run_of(path, 1)
        return f"re-run `robsal explain --run {run}`" if run is not None else "re-run `robsal explain`"


# --------------------------------------------------------------------------- run.json


@dataclass
class RunInfo(_Record):
    """``run.json``: when the run was made, from which commit, seed and config name."""

    created: str | None = field(default=None, metadata=_check(_opt(STR)))
    commit: str | None = field(default=None, metadata=_check(_opt(STR)))
    seed: int | None = field(default=None, metadata=_check(_opt(INT)))
    config_name: str | None = field(default=None, metadata=_check(_opt(STR)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return "delete it; `robsal run` writes it again"


# --------------------------------------------------------------------------- stages.json


@dataclass
class StageRecord(_Record):
    """One finished stage: when, how long, the fingerprint it ran with, and any extra info."""

    finished: str | None = field(default=None, metadata=_check(_opt(STR)))
    seconds: float | None = field(default=None, metadata=_check(_opt(NUM)))
    fingerprint: str | None = field(default=None, metadata=_check(_opt(STR)))
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
            raise RecordError(f"{path} must hold a JSON object, not {_type_name(data)}; {cls.fix(path)}")
        return cls({name: StageRecord.from_dict(rec, path, where=f"{name}.") for name, rec in data.items()})

    @classmethod
    def load(cls, path: str | Path) -> StageLedger:
        path = Path(path)
        return cls.from_dict(_read(path, RecordError, cls.fix(path)), path)

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
