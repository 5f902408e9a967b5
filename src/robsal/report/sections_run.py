"""Contexts of the report's first sections: run status (with the competence gate), dataset,
exact config, training and accuracy. Each function returns the plain data its template
(``templates/<section>.html.j2``) shows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from robsal.report import figures as F
from robsal.report.collect import RunContents
from robsal.report.context import Page, input_rgb, metrics_of, model_label
from robsal.report.format import Cell, Table, fmt, pct, text_table, verdict_class
from robsal.rundir import Gate, ModelRecord

# --------------------------------------------------------------------------- status


def status(page: Page) -> dict[str, Any]:
    run = page.run
    gate = run.summary.gate if run.summary is not None else None
    stages = None
    if run.stages:
        stages = text_table(["stage", "finished", "seconds"],
                            [[stage, rec.finished or "", fmt(rec.seconds, 1)] for stage, rec in run.stages.stages.items()],
                            text_cols=(0, 1))
    return {"glance": headline(run, gate), "gate": gate_table(gate) if gate else None, "stages": stages,
            "missing": run.missing}


def headline(run: RunContents, gate: Gate | None) -> dict[str, Any] | None:
    """Three kinds of line a reader wants first: accuracies, the gate, verdicts."""
    models = []
    for name, info in run.models.items():
        mt = metrics_of(info.record)
        rob = ", ".join(f"eps={k}: {pct(v)}" for k, v in (mt.robust_accuracy or {}).items())
        recall = recall_text(run, mt.per_class_accuracy)
        text = (f"{radius_text(info.record)}: clean accuracy {pct(mt.clean_accuracy)}, "
                f"balanced {pct(mt.balanced_accuracy)}{'; robust ' + rob if rob else ''}"
                f"{'; recall ' + recall if recall else ''}")
        models.append({"label": model_label(run, name), "text": text})
    verdicts = run.summary.verdicts if run.summary is not None else []
    lines = [{"cls": verdict_class(v.verdict or ""), "text": v.text}
             for v in verdicts if v.method in (None, "gradient") or len(verdicts) <= 6]
    if not models and gate is None and not lines:
        return None
    return {"models": models, "verdicts": lines,
            "gate": None if gate is None else {"comparable": gate.comparable, "rule": gate.rule or "",
                                               "reasons": "; ".join(gate.reasons or [])}}


def radius_text(record: ModelRecord | None) -> str:
    """', trained against an L2 radius of 0.33 at 64 px (pixels rule)' for an adversarially trained model, else ''."""
    if record is None or record.eps is None or record.eps <= 0 or record.eps_l2 is None:
        return ""
    radius, rule = record.eps_l2, record.eps_scaling or {}
    size, name = rule.get("image_size"), rule.get("rule")
    where = f" at {size} px" if size else ""
    how = f" ({name} rule)" if name else ""
    return f", trained against an L2 radius of {radius:.2f}{where}{how}"


def recall_text(run: RunContents, per_class: dict[str, float | None] | None) -> str:
    """'mel 0.62, nv 0.80, bkl 0.75' from a model.json per_class_accuracy (class -> recall)."""
    if per_class is None:
        return ""
    names = [c for c in run.classes if c in per_class] + [c for c in per_class if c not in run.classes]
    return ", ".join(f"{c} {per_class[c]:.2f}" if per_class[c] is not None else f"{c} n/a" for c in names)


def gate_table(gate: Gate) -> dict[str, Any]:
    """Per-class recall of every model and explained images per class, next to the verdicts."""
    recall = gate.recall or {}
    explained = gate.explained or {}
    classes: list[str] = []  # in the order the gate recorded them (the run's class order)
    for r in [*recall.values(), explained]:
        classes += [c for c in r if c not in classes]
    thr, k_min = gate.min_recall, gate.min_explained_per_class

    def mark(v: Any, low: bool) -> Cell:
        return Cell(fmt(v, 2), cls="verdict-na" if low else "")

    rows = []
    for name, rec in recall.items():
        rows.append([Cell(name)] + [
            mark(rec.get(c), rec.get(c) is None or (thr is not None and rec[c] < thr)) for c in classes
        ] + [Cell(fmt((gate.balanced_accuracy or {}).get(name), 3))])
    if explained:
        rows.append([Cell("explained images", em=True)] + [
            mark(explained.get(c), k_min is not None and explained.get(c, 0) < k_min) for c in classes
        ] + [Cell("")])
    header = ["model"] + [f"recall {c}" for c in classes] + ["balanced accuracy"]
    return {"comparable": gate.comparable, "rule": gate.rule or "", "table": Table(header, rows)}


# --------------------------------------------------------------------------- dataset


def dataset(page: Page) -> dict[str, Any]:
    run = page.run
    cfg_data = run.config.get("data", {}) if run.config else {}
    source = None
    if isinstance(cfg_data, dict) and cfg_data:
        src, root = cfg_data.get("source"), cfg_data.get("root")
        source = {"where": "built-in synthetic dermoscopy images" if src == "synthetic" and not root else f"{src} at {root}",
                  "size": cfg_data.get("image_size"), "split_by": cfg_data.get("split_by", "lesion")}
    counts, facts = split_counts(run) if run.splits is not None else (None, "")
    examples = example_tiles(page) if run.data is not None and run.splits is not None else None
    return {"source": source, "counts": counts, "facts": facts, "examples": examples}


def split_counts(run: RunContents) -> tuple[Table, str]:
    """Images per class and split (the last row: the totals), and a note on lesions and folds."""
    df = run.splits
    counts = pd.crosstab(df["label"].astype(str), df["split"].astype(str))
    split_order = [s for s in ("train", "val", "test") if s in counts.columns] + [
        s for s in counts.columns if s not in ("train", "val", "test")
    ]
    class_order = [c for c in run.classes if c in counts.index] + [c for c in counts.index if c not in run.classes]
    counts = counts.reindex(index=class_order, columns=split_order, fill_value=0)
    rows = [[c] + [str(int(v)) for v in counts.loc[c]] + [str(int(counts.loc[c].sum()))] for c in counts.index]
    total = [Cell("all", strong=True)] + [Cell(str(int(counts[s].sum())), strong=True) for s in split_order]
    rows.append(total + [Cell(str(len(df)), strong=True)])
    extra = []
    if "lesion_id" in df.columns:
        extra.append(f"{df['lesion_id'].nunique()} distinct lesions")
    if "fold" in df.columns:
        folds = pd.to_numeric(df["fold"], errors="coerce").dropna()
        if len(folds):
            extra.append(f"{folds.nunique()} cross-validation folds in train")
    return text_table(["class"] + split_order + ["total"], rows), "; ".join(extra)


def example_tiles(page: Page) -> list[dict[str, Any]]:
    """Per class: up to ``examples_per_class`` images (test images first) with mask and artifact outlines."""
    run, data = page.run, page.run.data
    split_of = data.splits["split"].astype(str).to_numpy()
    out = []
    for ci, cname in enumerate(data.classes):
        rows = np.flatnonzero(np.asarray(data.labels) == ci)
        is_test = split_of[rows] == "test"
        chosen = np.concatenate([rows[is_test], rows[~is_test]])[:page.examples_per_class]  # test images first
        tiles = []
        for r in chosen:
            iid = str(data.splits["image_id"].iloc[r])
            arts = [n for n, m in data.artifact_masks.items() if np.any(m[r])]
            mask_note = "" if data.masks is not None and bool(data.has_mask[r]) else " (no mask)"
            tiles.append({"id": iid, "src": page.png(input_rgb(run, iid, with_artifacts=True), "example"),
                          "note": mask_note, "artifacts": ", ".join(arts) or "no artifacts"})
        out.append({"name": cname, "tiles": tiles})
    return out


# --------------------------------------------------------------------------- config


def config(page: Page) -> dict[str, Any]:
    info = page.run.run_info
    bits = [f"{k}: {v}" for k, v in (("config_name", info.config_name), ("seed", info.seed), ("commit", info.commit),
                                      ("created", info.created)) if v is not None]
    return {"facts": "; ".join(bits), "text": page.run.config_text}


# --------------------------------------------------------------------------- training


def training(page: Page) -> dict[str, Any]:
    run = page.run
    if not run.models:
        return {"models": False}
    histories = {n: m.history for n, m in run.models.items() if m.history}
    png = F.training_curves_png(histories) if histories else None
    metrics = {n: metrics_of(m.record) for n, m in run.models.items()}
    confusion = [confusion_matrix(name, np.asarray(mt.confusion_matrix, dtype=float), run.classes)
                 for name, mt in metrics.items() if mt.confusion_matrix]
    return {"models": True, "curves": page.store.add(png, "training_curves") if png is not None else None,
            "accuracy": accuracy_table(run), "confusion": confusion}


def accuracy_table(run: RunContents) -> Table:
    """Per model: eps, seed, clean, balanced and robust accuracy, accuracy per class."""
    metrics = {n: metrics_of(m.record) for n, m in run.models.items()}
    eps_keys: list[str] = []
    for mt in metrics.values():
        eps_keys += [str(k) for k in (mt.robust_accuracy or {}) if str(k) not in eps_keys]
    eps_keys.sort(key=lambda k: float(k) if _is_number_text(k) else math.inf)
    classes = run.classes
    header = ["model", "eps (paper units)", "seed", "clean accuracy", "balanced accuracy"]
    header += [f"robust accuracy, eps={k}" for k in eps_keys] + [f"accuracy on {c}" for c in classes]
    rows = []
    for name, info in run.models.items():
        mt, rec = metrics[name], info.record or ModelRecord()
        robust, per_class = mt.robust_accuracy or {}, mt.per_class_accuracy or {}
        label = f"{name} (imported {rec.arch}, not trained by robsal)" if rec.imported else name
        rows.append([label, fmt(rec.eps, 2), fmt(rec.seed, 0), pct(mt.clean_accuracy), pct(mt.balanced_accuracy)]
                    + [pct(robust.get(k)) for k in eps_keys] + [pct(per_class.get(c)) for c in classes])
    return text_table(header, rows)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def confusion_matrix(name: str, cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Rows: true class; columns: predicted class; each cell's count and its share of the row (shading)."""
    k = cm.shape[1]
    names = [classes[i] if i < len(classes) else str(i) for i in range(max(cm.shape))]
    rows = []
    for i in range(cm.shape[0]):
        total = cm[i].sum()
        cells = [{"count": int(cm[i, j]), "alpha": f"{0.85 * (cm[i, j] / total if total > 0 else 0.0):.3f}"}
                 for j in range(k)]
        rows.append({"name": names[i], "cells": cells})
    return {"name": name, "columns": names[:k], "rows": rows}
