"""Typed records of further JSON files read back, in the pattern of :mod:`robsal.rundir.records`.

=================================================  =====================  =======================
file                                               record                 written by
=================================================  =====================  =======================
``tune/best.json``                                 :class:`TuneBest`      ``robsal tune``
``finetune`` of a fine-tuned model's model.json    :class:`FinetuneInfo`  ``robsal finetune``
=================================================  =====================  =======================

``SWEEP/sweep/cells.json`` is read only to be copied into the sweep's table.json;
:func:`robsal.io.read_json` checks that it is a JSON object, nothing reads its fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from robsal.rundir.schema import INT, NUM, Record, check, opt, run_of

__all__ = ["FinetuneInfo", "TuneBest"]

_POS = (lambda v: NUM[0](v) and math.isfinite(v) and v > 0, "a number > 0")
_COUNT = (lambda v: INT[0](v) and v >= 0, "a whole number >= 0")
_BATCH = (lambda v: INT[0](v) and v >= 1, "a whole number >= 1")
_GROUPS = (lambda v: isinstance(v, list) and bool(v) and all(INT[0](g) and 1 <= g <= 5 for g in v),
           "a list of layer groups 1-5")
_TEXT = (lambda v: isinstance(v, str), "a string")


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
    stopped: str | None = field(default=None, metadata=check(opt(_TEXT)))
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fix(cls, path: Path) -> str:
        return "delete the model folder; `robsal finetune` trains it again"
