"""The sweep's figures (``SWEEP/figures/``, each ``.png`` and ``.pdf``).

``sweep_accuracy`` (accuracy vs eps), ``sweep_metrics_<method>`` (every plotted metric vs
eps), ``sweep_stability`` (seed stability vs eps), ``sweep_grid_<method>`` (Figure 11: rows =
images, columns = eps) and ``sweep_seeds_<method>_eps<eps>`` (Figure 10: columns = seeds).
Figures are built as :class:`matplotlib.figure.Figure` objects, without pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from robsal.config import Config
from robsal.data import load_run_data
from robsal.errors import DataError
from robsal.experiments.sweep.grid import Cell
from robsal.rundir import read_saliency, record_figure
from robsal.saliency.figures import method_grid, save_figure

# metrics drawn in the metric-vs-eps figures (the table has every metric)
PLOT_METRICS = (
    "relevance_mass", "relevance_mass_lift", "relevance_rank", "pointing_game", "auroc",
    "gini", "entropy", "total_variation", "spatial_autocorrelation",
    "edge_correlation", "cos_input_gradient", "deletion_gap", "insertion_auc", "max_sensitivity",
)


def _line(ax: Axes, d: pd.DataFrame, label: str, band: bool) -> None:
    """Mean vs eps, with the CI (``band``) or the min-max range shaded."""
    d = d.sort_values("eps")
    ax.plot(d["eps"], d["mean"], marker="o", label=label)
    lo, hi = ("ci_low", "ci_high") if band else ("min", "max")
    if d[lo].notna().any():
        ax.fill_between(d["eps"], d[lo], d[hi], alpha=0.2)


def _accuracy_figure(acc: pd.DataFrame, stem: Path) -> list[Path]:
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for metric in sorted(set(acc["metric"]), key=lambda m: (m != "clean_accuracy", m)):
        if metric == "balanced_accuracy":
            continue
        _line(ax, acc[acc["metric"] == metric], metric.replace("_accuracy", ""), band=False)
    ax.set_xlabel("training eps (paper units)")
    ax.set_ylabel("test accuracy (mean; band: min-max over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)


def _metrics_figure(d: pd.DataFrame, method: str, shown: Sequence[str], alpha: float, stem: Path) -> list[Path]:
    ncol = min(4, len(shown))
    nrow = (len(shown) + ncol - 1) // ncol
    fig = Figure(figsize=(3.0 * ncol, 2.4 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, metric in zip(axes.ravel(), shown):
        _line(ax, d[d["metric"] == metric], metric, band=True)
        ax.set_title(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"{method}: metric vs training eps (mean, {1 - alpha:.0%} bootstrap CI over images)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def _stability_figure(stab: pd.DataFrame, stem: Path) -> list[Path]:
    shown = sorted(set(stab["metric"]))
    fig = Figure(figsize=(4.0 * len(shown), 3.0))
    axes = fig.subplots(1, len(shown), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        for m in sorted(set(stab["method"])):
            _line(ax, stab[(stab["metric"] == metric) & (stab["method"] == m)], m, band=True)
        ax.set_title(f"{metric} across seeds", fontsize=9)
        ax.set_xlabel("training eps")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)


def write_figures(
    out: Path, cfg: Config, table: pd.DataFrame, ok: Sequence[Cell], data: Any, method: str
) -> list[Path]:
    """Every figure of the sweep from its table and the maps of ``method``; the paths written.

    Each figure is recorded in ``SWEEP/figures/index.json`` with the report section that shows it.
    """
    fig_dir = out / "figures"
    paths: list[Path] = []
    acc = table[table["section"] == "accuracy"]
    if len(acc):
        paths += _recorded(out, _accuracy_figure(acc, fig_dir / "sweep_accuracy"), "figures",
                           "Clean and robust accuracy against training eps")
    sal = table[table["section"] == "saliency"]
    for m in sorted(set(sal["method"])):
        d = sal[sal["method"] == m]
        shown = [x for x in PLOT_METRICS if (d["metric"] == x).any()]
        if shown:
            paths += _recorded(out, _metrics_figure(d, m, shown, cfg.metrics.alpha, fig_dir / f"sweep_metrics_{m}"),
                               "metrics", f"{m}: metrics against training eps")
    stab = table[table["section"] == "stability"]
    if len(stab):
        paths += _recorded(out, _stability_figure(stab, fig_dir / "sweep_stability"), "metrics",
                           "Seed stability of the maps against training eps")
    paths += _map_grids(out, cfg, ok, data, method)
    return paths


def _recorded(out: Path, written: list[Path], section: str, caption: str) -> list[Path]:
    """``written``, its PNG recorded in ``out/figures/index.json`` under ``section``."""
    for p in written:
        if p.suffix == ".png":
            record_figure(out, p, section, caption, producer="sweep")
    return written


# --------------------------------------------------------------------------- map grids (Figures 10, 11)


def _spread(labels: np.ndarray, limit: int) -> list[int]:
    """Up to ``limit`` positions, taking the classes in turn."""
    queues = [list(np.flatnonzero(labels == k)) for k in sorted(set(labels.tolist()))]
    out: list[int] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)


def _load_maps(
    out: Path, cfg: Config, ok: Sequence[Cell], method: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Cell name -> its maps of ``method`` (checked: :func:`robsal.rundir.read_saliency`), and the image
    ids they share (DataError when a cell explains other images)."""
    maps: dict[str, np.ndarray] = {}
    ids = None
    for c in ok:
        path = out / "saliency" / c.name / f"{method}.npz"
        if path.exists():
            arr = read_saliency(path, len(cfg.data.classes))
            if ids is not None and arr["image_ids"].tolist() != ids.tolist():
                raise DataError(f"{path} explains other images than the other cells; re-run `robsal explain`")
            maps[c.name] = arr["maps"]
            ids = arr["image_ids"] if ids is None else ids
    return maps, ids


def _map_grids(out: Path, cfg: Config, ok: Sequence[Cell], data: Any, method: str) -> list[Path]:
    """Figure 11 (rows = images, columns = eps; the smallest seed of each eps) and Figure 10
    (per eps with several seeds: columns = seeds)."""
    maps, ids = _load_maps(out, cfg, ok, method)
    if not maps or ids is None:
        return []
    if data is None:
        data = load_run_data(out)
    rows = data.rows_of(list(ids))
    show = _spread(data.labels[rows], cfg.saliency.figure_images)
    if not show:
        return []
    images = np.asarray(data.images[rows[show]])
    grid = {"row_labels": [f"{ids[i]} ({data.classes[data.labels[rows[i]]]})" for i in show],
            "normalisation": cfg.saliency.reduction}
    by_eps: dict[float, list[Cell]] = {}
    for c in ok:
        if c.name in maps:
            by_eps.setdefault(c.eps, []).append(c)
    columns = {}
    for eps in sorted(by_eps):
        c = min(by_eps[eps], key=lambda x: x.seed)
        label = f"eps {eps:g}" + (" (standard)" if eps == 0 else "")
        columns[f"{label}, seed {c.seed}"] = maps[c.name][show]
    paths = _recorded(out, method_grid(images, columns, out / "figures" / f"sweep_grid_{method}",
                                       title=f"{method} maps vs training eps (Figure 11)", **grid),
                      "figures", f"{method} maps against training eps (Figure 11)")
    for eps, group in sorted(by_eps.items()):
        if len(group) < 2:
            continue
        cols = {f"seed {c.seed}": maps[c.name][show] for c in sorted(group, key=lambda x: x.seed)}
        paths += _recorded(out, method_grid(images, cols, out / "figures" / f"sweep_seeds_{method}_eps{eps:g}",
                                            title=f"{method} maps, eps {eps:g}, seeds (Figure 10)", **grid),
                           "figures", f"{method} maps of the seeds at eps {eps:g} (Figure 10)")
    return paths
