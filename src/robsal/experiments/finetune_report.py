"""Tables and figures of ``robsal finetune`` (paper Appendix D, Figures 12-13).

``RUN/finetune/accuracy.csv|json`` (standard, each variant, robust: clean, balanced,
per-class and robust accuracy; the competence gate), ``RUN/figures/finetune_accuracy``
(Figure 13) and ``RUN/figures/finetune_gradient`` (Figure 12: Gradient maps of the same
images for every model; the maps are kept in ``RUN/finetune/saliency/``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from robsal.config import Config
from robsal.errors import DataError
from robsal.experiments.sweep import any_images
from robsal.io import atomic_open, write_json
from robsal.metrics import gate as competence
from robsal.models import load
from robsal.rundir import ModelRecord, record_figure
from robsal.saliency import select_images
from robsal.saliency.figures import method_grid, save_figure
from robsal.saliency.run import compute_maps
from robsal.training.evaluate import stratified_subset


def variant_label(groups: Sequence[int]) -> str:
    """(4, 5) -> "4-5", (5,) -> "5": how a variant's groups are written in names and tables."""
    groups = sorted(groups)
    return str(groups[0]) if len(groups) == 1 else f"{groups[0]}-{groups[-1]}"


def write_outputs(
    run_dir: Path, cfg: Config, data: Any, source: str, standard: str | None, variants: dict[str, dict[str, Any]],
    settings: dict[str, Any], *, figures: bool, images: str, device: torch.device, progress: bool,
) -> tuple[pd.DataFrame, competence.Gate, list[Path]]:
    """Write the accuracy table (csv, json with the competence gate) and, with ``figures``, Figures 12-13.

    ``variants``: fine-tuned model name -> its ``finetune`` summary; ``settings``: the
    fine-tuning settings recorded in accuracy.json. Returns (table, gate, figure paths).
    """
    table = accuracy_table(run_dir, source, standard, list(variants), variants)
    out_dir = run_dir / "finetune"
    with atomic_open(out_dir / "accuracy.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False, float_format="%.6g")
    # the maps of Figure 12 compare these models: only competent ones are comparable
    model_metrics = {n: ModelRecord.trained(run_dir / "models" / n / "model.json").metrics.to_dict()
                     for n in table["model"]}
    gate = competence.check(model_metrics, list(data.classes), None, min_recall=cfg.metrics.min_recall)
    write_json(out_dir / "accuracy.json", {
        "source": source, "standard": standard, "settings": settings,
        "comparable": gate.comparable, "gate": gate.to_dict(),
        "rows": json.loads(table.to_json(orient="records")),
        "note": "frozen BatchNorm layers stay in eval mode (the original code let their statistics drift)",
    })
    paths: list[Path] = []
    if figures:
        paths += _recorded(run_dir, accuracy_figure(table, run_dir / "figures" / "finetune_accuracy"),
                           "Accuracy of the standard, fine-tuned and robust models (Figure 13)")
        paths += _recorded(run_dir, saliency_figure(
            run_dir, cfg, data, list(table["model"]), images=images, device=device, progress=progress,
            not_comparable=None if gate.comparable else gate.reason,
        ), "Gradient maps: standard, the fine-tuned variants, robust (Figure 12)")
    return table, gate, paths


def _recorded(run_dir: Path, written: list[Path], caption: str) -> list[Path]:
    """``written``, its PNG recorded in ``RUN/figures/index.json`` (the report's section of other figures)."""
    for p in written:
        if p.suffix == ".png":
            record_figure(run_dir, p, "figures", caption, producer="finetune")
    return written


def _order(variants: Sequence[str], info: dict[str, dict[str, Any]]) -> list[str]:
    """Most groups fine-tuned first (closest to the standard model), as in Figures 12-13."""
    return sorted(variants, key=lambda n: (-len(info[n]["groups"]), n))


def accuracy_table(
    run_dir: Path, source: str, standard: str | None, variants: Sequence[str], info: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """Figure 13's numbers: standard, the variants (most groups first), the robust model."""
    rows = []
    order = ([standard] if standard else []) + _order(variants, info) + [source]
    for name in order:
        meta = ModelRecord.trained(run_dir / "models" / name / "model.json")
        m = meta.metrics.to_dict()
        role = "standard" if name == standard else ("robust" if name == source else "fine-tuned")
        ft = info.get(name, {})
        row = {
            "model": name,
            "role": role,
            "groups": variant_label(ft["groups"]) if ft else "",
            "eps": meta.eps,
            "clean_accuracy": m.get("clean_accuracy"),
            "balanced_accuracy": m.get("balanced_accuracy"),
            "epochs": ft.get("epochs", meta.epochs),
            "best_epoch": ft.get("best_epoch"),
            "stopped": ft.get("stopped", ""),
        }
        for c, v in (m.get("per_class_accuracy") or {}).items():  # test recall per class (competence gate)
            row[f"recall_{c}"] = v
        for k, v in sorted((m.get("robust_accuracy") or {}).items(), key=lambda kv: float(kv[0])):
            row[f"robust_accuracy@{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_figure(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Figure 13: clean and balanced test accuracy of standard, fine-tuned and robust models."""
    labels = [
        "standard" if r["role"] == "standard" else (f"ft {r['groups']}" if r["role"] == "fine-tuned" else r["model"])
        for _, r in table.iterrows()
    ]
    pos = np.arange(len(table))
    fig = Figure(figsize=(1.4 + 1.0 * len(table), 3.2))
    ax = fig.subplots()
    for k, (col, lab) in enumerate((("clean_accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))):
        vals = table[col].astype(float).to_numpy()
        bars = ax.bar(pos + (k - 0.5) * 0.38, vals, width=0.38, label=lab)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.1%}", ha="center", fontsize=6)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("standard fine-tuning of layer groups of a robust model (Figure 13)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, stem)


def saliency_figure(
    run_dir: Path, cfg: Config, data: Any, names: Sequence[str], *, images: str, device: torch.device,
    progress: bool = True, not_comparable: str | None = None,
) -> list[Path]:
    """Figure 12: Gradient maps of the given models (standard, variants, robust) on the same images.

    ``not_comparable``: the competence gate's reasons when some model fails it; the title says so."""
    models = {n: load(run_dir / "models" / n, device) for n in names}
    k = cfg.saliency.n_per_class
    if images == "all":
        rows = data.rows_of(any_images(data, k, cfg.seed))
    else:
        try:
            rows = select_images(data, models, k, cfg.seed, device, cfg.train.eval_batch_size)
        except DataError as exc:
            raise DataError(f"{exc}; or explain any test images (images='all')") from None
    _, raw = compute_maps(run_dir / "finetune", models, data, rows, ["gradient"], cfg,
                          target=cfg.saliency.target, device=device, progress=progress)
    # up to figure_images of them, the classes in turn
    show = stratified_subset(data.labels[rows], np.arange(len(rows)), cfg.saliency.figure_images)
    ids = [data.image_ids[r] for r in rows]
    return method_grid(
        np.asarray(data.images[rows[show]]),
        {n: raw["gradient"][n][show] for n in names},
        run_dir / "figures" / "finetune_gradient",
        title="Gradient maps: standard, robust model with layer groups fine-tuned, robust (Figure 12)"
        + (f"\nNOT COMPARABLE: {not_comparable}" if not_comparable else ""),
        row_labels=[f"{ids[i]} ({data.classes[data.labels[rows[i]]]})" for i in show],
        normalisation=cfg.saliency.reduction,
    )
