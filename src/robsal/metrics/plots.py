"""Figures of the metrics stage (atomic PNG writes) under ``RUN/figures/``.

- ``metrics_localisation.png``, ``metrics_sharpness.png``,
  ``metrics_alignment_faithfulness.png``: one panel per metric, boxes of the per-image
  values per method (x) and model (colour), controls included.
- ``deletion_curves.png``: mean target probability along deletion (MoRF, solid; LeRF,
  dotted) and insertion (dashed) per method, one line colour per model.
- ``sanity_randomisation.png``: mean Spearman and SSIM to the original maps as groups are
  randomised from the logits down, with the random-pair floor (horizontal line).

Matplotlib is used through its object API (``Figure``, saved by the Agg canvas), never
through ``pyplot``, so writing the figures changes no global state of the caller (its
backend, its open figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rcParams
from matplotlib.figure import Figure

from robsal.io import atomic_path
from robsal.metrics.per_image import CONTROL_MODEL, Curves
from robsal.rundir import record_figure

# per-image metrics that get a box plot, by figure (the rest are in summary.csv)
BOX_FIGURES: dict[str, tuple[str, ...]] = {
    "metrics_localisation": ("relevance_mass", "relevance_mass_lift", "relevance_rank", "pointing_game", "auroc"),
    "metrics_sharpness": ("gini", "entropy", "total_variation", "spatial_autocorrelation"),
    "metrics_alignment_faithfulness": (
        "edge_correlation", "cos_input_gradient", "deletion_gap", "insertion_auc", "max_sensitivity",
    ),
}
DPI = 90
# what each figure shows (its caption in RUN/figures/index.json and the report)
CAPTIONS = {
    "metrics_localisation": "Localisation metrics per image: one box per method and model",
    "metrics_sharpness": "Sharpness and complexity metrics per image: one box per method and model",
    "metrics_alignment_faithfulness": "Alignment and faithfulness metrics per image: one box per method and model",
    "deletion_curves": "Mean target probability along deletion (MoRF solid, LeRF dotted) and insertion (dashed)",
    "sanity_randomisation": "Model randomisation test: similarity to the original maps as layers are randomised",
}


def _colours() -> list[str]:
    return rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def box_figure(per_image: pd.DataFrame, metrics: tuple[str, ...], path: Path) -> Path | None:
    """One panel per metric; x = method, one box per model (colours), controls included."""
    metrics = tuple(m for m in metrics if (per_image["metric"] == m).any())
    if not metrics:
        return None
    present = set(per_image["model"])
    models = sorted(present - {CONTROL_MODEL}) + ([CONTROL_MODEL] if CONTROL_MODEL in present else [])
    colours = _colours()
    fig = Figure(figsize=(9, 2.3 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        d = per_image[per_image["metric"] == metric]
        methods = sorted(set(d["method"]), key=lambda m: (m.startswith("control"), m))
        k = len([m for m in models if m != CONTROL_MODEL])  # boxes side by side per method
        width = 0.8 / max(1, k)
        for j, model in enumerate(models):
            dm = d[d["model"] == model]
            data, pos = [], []
            for i, method in enumerate(methods):
                v = dm[dm["method"] == method]["value"].to_numpy()
                if len(v):
                    data.append(v)
                    pos.append(i if model == CONTROL_MODEL else i + (j - (k - 1) / 2) * width)
            if not data:
                continue
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
            for box in bp["boxes"]:
                box.set_facecolor(colours[j % len(colours)])
                box.set_alpha(0.6)
            ax.plot([], [], "s", color=colours[j % len(colours)], label=model)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([m.replace("integrated_gradients", "IG") for m in methods], fontsize=7, rotation=15)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=len(models), loc="best")
    fig.tight_layout()
    return _save(fig, path)


def deletion_plot(curves: Curves, path: Path) -> Path | None:
    methods = sorted({me for per in curves.values() for me in per})
    if not methods:
        return None
    cols = min(3, len(methods))
    rows = (len(methods) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = _colours()
    for ax, method in zip(axes.flat, methods):
        for j, (model, per) in enumerate(sorted(curves.items())):
            if method not in per:
                continue
            c = colours[j % len(colours)]
            for path_name, style in (("deletion", "-"), ("deletion_lerf", ":"), ("insertion", "--")):
                y = per[method][path_name]
                x = [k / (len(y) - 1) for k in range(len(y))]
                ax.plot(x, y, style, color=c, label=f"{model} {path_name}")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("p(target)")
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def sanity_plot(sanity: dict[str, dict[str, Any]], path: Path) -> Path | None:
    methods = sorted({me for per in sanity.values() for me in per})
    if not methods:
        return None
    fig = Figure(figsize=(3.2 * len(methods), 5.6))
    axes = fig.subplots(2, len(methods), squeeze=False)
    colours = _colours()
    for col, method in enumerate(methods):
        for j, (model, per) in enumerate(sorted(sanity.items())):
            if method not in per:
                continue
            s, c = per[method], colours[j % len(colours)]
            for row, key in enumerate(("spearman", "ssim")):
                ax = axes[row, col]
                ys = [float("nan") if s[key][st] is None else s[key][st] for st in s["stages"]]
                ax.plot(["orig"] + s["stages"], [1.0] + ys, "o-", color=c, label=f"{model}")
                if s[f"floor_{key}"] is not None:
                    ax.axhline(s[f"floor_{key}"], color=c, ls=":", lw=1)
                ax.set_ylabel(key)
                ax.set_ylim(-0.2, 1.05)
        axes[0, col].set_title(method, fontsize=9)
        axes[1, col].set_xlabel("randomised down to")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(
    fig_dir: str | Path, per_image: pd.DataFrame, curves: Curves, sanity: dict[str, dict[str, Any]]
) -> list[Path]:
    """Every figure of the metrics stage into ``fig_dir`` (``RUN/figures``); returns the paths written.

    ``curves``, ``sanity``: the ``faithfulness_curves`` and ``sanity`` parts of summary.json.
    Each figure is recorded in ``RUN/figures/index.json`` for the report's metrics section.
    """
    fig_dir = Path(fig_dir)
    paths = [box_figure(per_image, metrics, fig_dir / f"{stem}.png") for stem, metrics in BOX_FIGURES.items()]
    paths.append(deletion_plot(curves, fig_dir / "deletion_curves.png"))
    paths.append(sanity_plot(sanity, fig_dir / "sanity_randomisation.png"))
    written = [p for p in paths if p]
    for p in written:
        record_figure(fig_dir.parent, p, "metrics", CAPTIONS.get(p.stem), producer="evaluate")
    return written
