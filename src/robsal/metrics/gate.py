"""The competence gate: compare saliency of models only where the comparison means something.

A saliency verdict about a model that cannot recognise a class says nothing about how it
recognises it. The paper (Section 2) explains correctly classified images only and
compares two competent models (both fine-tuned from ImageNet weights). robsal makes the
same precondition explicit and checks it before calling any verdict:

1. every compared model reaches a minimum **recall on every class** of the test split
   (``metrics.min_recall``, default 0.5; recall = the ``per_class_accuracy`` of
   ``model.json``), and
2. every class has at least ``metrics.min_explained_per_class`` **explained images**
   (test images that every compared model classifies correctly; ``saliency/selection.json``).

Otherwise the comparison is **not comparable**, with one line per reason, e.g.
``robust_eps4 recalls mel at 0.00 (< 0.50)`` or ``mel has 1 explained image (< 5)``. The
paired differences and their CIs are still computed and reported as descriptions; the
verdicts (and the sweep's and fine-tuning's comparisons) say "not comparable", never
"not supported".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from robsal.metrics.stats import CLAIMS

NOT_COMPARABLE = "not comparable"


@dataclass
class Gate:
    """The outcome of the competence gate for a set of compared models."""

    models: list[str]
    reasons: list[str] = field(default_factory=list)  # empty: comparable
    min_recall: float = 0.5
    min_explained_per_class: int = 1
    recall: dict[str, dict[str, float | None]] = field(default_factory=dict)  # model -> class -> recall
    balanced_accuracy: dict[str, float | None] = field(default_factory=dict)
    explained: dict[str, int] | None = None  # class -> explained images (None: not known)

    @property
    def comparable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str:
        """All reasons on one line ('' when comparable)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"comparable": self.comparable, **asdict(self)}


def _recall_of(metrics: Mapping[str, Any] | None, classes: Sequence[str]) -> dict[str, float | None]:
    """class -> recall from a model.json ``per_class_accuracy`` mapping (None where absent)."""
    per_class = (metrics or {}).get("per_class_accuracy") or {}
    return {c: None if per_class.get(c) is None else float(per_class[c]) for c in classes}


def check(
    model_metrics: Mapping[str, Mapping[str, Any] | None],
    classes: Sequence[str],
    explained: Mapping[str, int] | None,
    *,
    min_recall: float = 0.5,
    min_explained_per_class: int = 1,
) -> Gate:
    """Apply the gate to the compared models.

    ``model_metrics``: model name -> the ``metrics`` of its ``model.json`` (needs
    ``per_class_accuracy``: class -> recall on the test split). ``explained``: class ->
    number of explained images (None when no image selection is known; then only recall
    is checked). A model without per-class recall fails the gate (its competence is unknown).
    """
    reasons: list[str] = []
    recall: dict[str, dict[str, float | None]] = {}
    balanced: dict[str, float | None] = {}
    for name, metrics in model_metrics.items():
        rec = _recall_of(metrics, classes)
        recall[name] = rec
        ba = (metrics or {}).get("balanced_accuracy")
        balanced[name] = None if ba is None else float(ba)
        unknown = [c for c, v in rec.items() if v is None]
        if unknown:
            reasons.append(f"{name} has no test recall for {', '.join(unknown)} (its competence is unknown)")
        for c, v in rec.items():
            if v is not None and v < min_recall:
                reasons.append(f"{name} recalls {c} at {v:.2f} (< {min_recall:.2f})")
    if explained is not None:
        for c in classes:
            k = int(explained.get(c, 0))
            if k < min_explained_per_class:
                word = "image" if k == 1 else "images"
                reasons.append(f"{c} has {k} explained {word} (< {min_explained_per_class})")
    return Gate(
        models=list(model_metrics),
        reasons=reasons,
        min_recall=float(min_recall),
        min_explained_per_class=int(min_explained_per_class),
        recall=recall,
        balanced_accuracy=balanced,
        explained=None if explained is None else {c: int(explained.get(c, 0)) for c in classes},
    )


def gate_verdicts(verdicts: list[dict[str, Any]], gates: Mapping[tuple[str, str], Gate]) -> list[dict[str, Any]]:
    """Replace the verdict of every (robust, standard) pair whose gate failed by "not comparable".

    The statistical verdict the numbers would have given is kept as ``verdict_if_comparable``
    (descriptive only), and ``line`` gives the reason instead of the test results.
    """
    out = []
    for v in verdicts:
        g = gates.get((v.get("robust"), v.get("standard")))
        v = dict(v)
        if g is not None and not g.comparable:
            v["verdict_if_comparable"] = v.get("verdict")
            v["verdict"] = NOT_COMPARABLE
            v["reason"] = g.reason
            sentence = CLAIMS[v["claim"]][0] if v.get("claim") in CLAIMS else str(v.get("claim"))
            v["line"] = f"{sentence} ({v.get('robust')} vs {v.get('standard')}, {v.get('method')}): {NOT_COMPARABLE}: {g.reason}"
        out.append(v)
    return out
