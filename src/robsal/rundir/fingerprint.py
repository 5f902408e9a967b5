"""One fingerprint of the config per consumer, over a declared table of config sections.

A finished piece of work (a stage, a trained model, a CV cell, a cached dataset) records
the fingerprint of what it depends on; it is reused only while the fingerprint still
matches. Every consumer is one entry of :data:`SECTIONS`, so "which config change makes
this stale" is answered in one place. The strings are those robsal has always written
(existing run folders resume): do not change an entry's sections without expecting
every run folder to redo that work.

Hashing: ``sha256(json.dumps({section: cfg[section], **named}, sort_keys=True))[:16]``;
positional ``extra`` inputs (a sweep's cell names and image rule) are hashed after it as
``sha256(json.dumps([that, *extra]))[:16]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robsal.config import Config

# The main job's stages cover their own sections and those of every earlier stage (a stage
# whose input changed invalidates every later one); test_fingerprint checks the chain.
_TRAIN = ("adversary", "augment", "data", "model", "models", "robustness", "train", "tune")

SECTIONS: dict[str, tuple[str, ...]] = {
    # the main job (robsal.experiments.run.STAGES), in order
    "data": ("data",),
    "tune": ("data", "model", "train", "tune"),
    "train": _TRAIN,
    "explain": _TRAIN + ("saliency",),
    "evaluate": _TRAIN + ("metrics", "saliency"),
    "report": _TRAIN + ("metrics", "saliency"),
    # one trained model (robsal.training.train; named extra: spec={name, eps, seed})
    "training": ("seed", "data", "augment", "model", "train", "adversary", "robustness"),
    # one CV fit of robsal tune (robsal.training.cv; named extra: cell={fold, lr, batch_size | phase})
    "cv_cell": ("seed", "data", "augment", "model", "train"),
    # a fine-tuned model (robsal.experiments.finetune; named extras: source, groups, settings)
    "finetune": ("seed", "data", "augment", "train", "robustness", "adversary"),
    # the sweep's stages (robsal.experiments.sweep; extra: cell names, image rule)
    "sweep_tune": ("data", "model", "train", "tune"),
    "sweep_explain": ("seed",) + _TRAIN + ("saliency",),
    "sweep_evaluate": ("seed",) + _TRAIN + ("metrics", "saliency"),
    # one rate of the positive control (robsal.experiments.control): everything but device and threads
    "control_rate": ("name", "seed", "data", "augment", "model", "train", "adversary", "models", "tune",
                     "robustness", "saliency", "metrics", "control"),
    # the synthetic dataset's shared cache folder (robsal.data.pipeline; named extras:
    # version, settings = the generator settings made from data.synth)
    "data_cache": (),
}


# Config fields added after run folders existed: hashed only when set, so that every older run
# folder keeps its fingerprints (section -> field of each list entry).
_ADDED_LIST_FIELDS: dict[str, tuple[str, ...]] = {"models": ("path",)}


def _without_unset_additions(d: dict[str, Any]) -> dict[str, Any]:
    for section, fields in _ADDED_LIST_FIELDS.items():
        d[section] = [{k: v for k, v in entry.items() if not (k in fields and v is None)} for entry in d[section]]
    return d


def _digest(obj: Any, *, sort_keys: bool = True) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=sort_keys, default=str).encode()).hexdigest()[:16]


def fingerprint(cfg: Config, stage_or_sections: str | Sequence[str], *extra: Any, **named: Any) -> str:
    """16 hex digits over the config sections of ``stage_or_sections`` plus the given inputs.

    ``stage_or_sections``: a key of :data:`SECTIONS` (or, for a one-off, a tuple of section
    names). ``named`` inputs join the sections in the hashed object (e.g. ``spec=`` of a
    trained model); ``extra`` inputs are chained after it (a sweep's cell list).
    """
    if isinstance(stage_or_sections, str):
        try:
            sections = SECTIONS[stage_or_sections]
        except KeyError:
            raise KeyError(f"no fingerprint entry {stage_or_sections!r}; declare it in SECTIONS") from None
    else:
        sections = tuple(stage_or_sections)
    d = _without_unset_additions(cfg.to_dict())
    part = {s: d[s] for s in sections}
    clash = set(part) & set(named)
    if clash:
        raise ValueError(f"named fingerprint inputs {sorted(clash)} clash with config sections")
    part.update(named)
    base = _digest(part)
    return _digest([base, *extra], sort_keys=False) if extra else base


def is_complete(model_dir: str | Path, fp: str) -> bool:
    """Whether ``model_dir`` holds a finished model trained with fingerprint ``fp``.

    Finished: ``model.safetensors`` and a readable ``model.json`` with ``metrics`` and that
    fingerprint (``model.json`` is written last). A damaged ``model.json`` is not complete
    (the model is trained again and the file rewritten).
    """
    from robsal.rundir.records import ModelRecord, RecordError

    model_dir = Path(model_dir)
    if not (model_dir / "model.json").exists() or not (model_dir / "model.safetensors").exists():
        return False
    try:
        rec = ModelRecord.load(model_dir / "model.json")
    except RecordError:
        return False
    return rec.fingerprint == fp and rec.metrics is not None
