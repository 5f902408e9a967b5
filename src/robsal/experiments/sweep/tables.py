"""The sweep's aggregates: ``SWEEP/sweep/table.csv|json`` and ``optimal_eps.csv|json``.

The long table has one row per (section, eps, method, metric): section ``accuracy`` (mean,
sd, min, max over seeds), ``saliency`` (every per-image metric: mean over images of the
per-image mean over seeds, bootstrap CI over images) and ``stability`` (seed stability of
the maps per eps, Figure 10). They are always recomputed from the cells' ``model.json`` and
``metrics/per_image.csv`` (cheap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robsal.config import Config, load_run_config
from robsal.errors import DataError, UserError
from robsal.experiments.per_image_eps import PAPER_BAND, OptimumResult, band_for, optimal_eps, write_optimum
from robsal.experiments.sweep.figures import write_figures
from robsal.experiments.sweep.grid import SWEEP_SUBDIR, Cell, cells_of
from robsal.io import atomic_open, read_json, write_json
from robsal.rundir import ModelRecord, Selection, Summary, read_per_image
from robsal.metrics.gate import check as gate_check
from robsal.metrics.stats import bootstrap_ci, stable_seed
from robsal.utils import json_safe

TABLE_COLUMNS = [
    "section", "eps", "method", "metric", "n_seeds", "n_images",
    "mean", "sd_seeds", "ci_low", "ci_high", "min", "max", "comparable",
]
PER_IMAGE_COLUMNS = ["image_id", "model", "method", "metric", "value"]


@dataclass
class OptimumSpec:
    """Which per-image metric defines the optimal eps (Appendix C.3)."""

    metric: str = "relevance_mass"
    method: str = "gradient"
    direction: str | None = None  # None: robsal.experiments.per_image_eps.DIRECTIONS
    band: tuple[float, float] = PAPER_BAND


# --------------------------------------------------------------------------- rows


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _row(section: str, eps: float, method: str, metric: str, **kw: Any) -> dict[str, Any]:
    row = {c: float("nan") for c in TABLE_COLUMNS}
    row.update({"section": section, "eps": float(eps), "method": method, "metric": metric})
    row.update(kw)
    return row


def _accuracies(ms: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], int | None]]:
    """Accuracy name -> (one value per seed, number of images it is measured on)."""
    quantities: dict[str, tuple[list[float], int | None]] = {}
    for q in ("clean_accuracy", "balanced_accuracy"):
        vals = [m[q] for m in ms if m.get(q) is not None]
        if vals:
            quantities[q] = (vals, ms[0].get("n_test"))
    keys = sorted({k for m in ms for k in (m.get("robust_accuracy") or {})}, key=float)
    for k in keys:
        vals = [m["robust_accuracy"][k] for m in ms if k in (m.get("robust_accuracy") or {})]
        quantities[f"robust_accuracy@{k}"] = (vals, (ms[0].get("robust_eval") or {}).get("n_images"))
    return quantities


def accuracy_rows(cells: Sequence[Cell], metrics: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Clean, balanced and robust accuracy per eps: mean, sd, min, max over the seeds."""
    rows = []
    for eps in sorted({c.eps for c in cells if c.name in metrics}):
        ms = [metrics[c.name] for c in cells if c.eps == eps and c.name in metrics]
        for q, (vals, n_img) in _accuracies(ms).items():
            mean, sd = _mean_sd(vals)
            rows.append(_row("accuracy", eps, "", q, n_seeds=len(vals), n_images=n_img if n_img is not None else float("nan"),
                             mean=mean, sd_seeds=sd, min=float(np.min(vals)), max=float(np.max(vals))))
    return rows


def saliency_rows(
    per_image: pd.DataFrame, eps_of: Mapping[str, float], *, n_boot: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Every per-image metric per (eps, method): mean over images of the mean over seeds, CI over images."""
    d = per_image[per_image["model"].isin(list(eps_of))].copy()
    if d.empty:
        return []
    d["eps"] = d["model"].map(lambda m: float(eps_of[m]))
    rows = []
    for (eps, method, metric), g in d.groupby(["eps", "method", "metric"], sort=True):
        per_img = g.groupby("image_id")["value"].mean().to_numpy(dtype=np.float64)
        per_seed = g.groupby("model")["value"].mean().to_numpy(dtype=np.float64)
        mean, lo, hi = bootstrap_ci(
            per_img, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, "sweep", f"{eps:g}", method, metric)
        )
        rows.append(_row("saliency", eps, method, metric, n_seeds=len(per_seed), n_images=len(per_img),
                         mean=mean, sd_seeds=_mean_sd(per_seed)[1], ci_low=lo, ci_high=hi,
                         min=float(per_img.min()), max=float(per_img.max())))
    return rows


def stability_rows(
    per_image: pd.DataFrame, seeds_at: Mapping[float, int], *, n_boot: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Seed stability per eps (``seeds_eps<eps>`` rows of evaluate_run): mean and CI over images."""
    rows = []
    for eps, n_seeds in sorted(seeds_at.items()):
        label = f"seeds_eps{eps:g}"
        d = per_image[per_image["model"] == label]
        for (method, metric), g in d.groupby(["method", "metric"], sort=True):
            v = g["value"].to_numpy(dtype=np.float64)
            mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, label, method, metric))
            rows.append(_row("stability", eps, method, metric, n_seeds=n_seeds, n_images=len(v), mean=mean,
                             ci_low=lo, ci_high=hi, min=float(v.min()), max=float(v.max())))
    return rows


def read_table(out: str | Path) -> pd.DataFrame:
    """``SWEEP/sweep/table.csv`` as a DataFrame."""
    path = Path(out) / SWEEP_SUBDIR / "table.csv"
    if not path.exists():
        raise UserError(f"{path} is missing; run `robsal sweep` into {out} first")
    return pd.read_csv(path, keep_default_na=True).fillna({"method": ""})


# --------------------------------------------------------------------------- the competence gate


def sweep_gates(
    out: Path, cfg: Config, ok: Sequence[Cell], metrics: Mapping[str, dict[str, Any]]
) -> tuple[Any, dict[float, Any]]:
    """The competence gate over every trained cell (overall) and over the cells of each eps.

    The explained images per class come from the metrics stage (``metrics/summary.json``)
    or the image selection (``saliency/selection.json``); before either exists only recall
    is checked.
    """
    classes = list(cfg.data.classes)
    explained = None
    summary_path, sel_path = out / "metrics" / "summary.json", out / "saliency" / "selection.json"
    if summary_path.exists():
        explained = Summary.load(summary_path).explained_per_class
    if explained is None and sel_path.exists():
        explained = Selection.load(sel_path).selected
    kw = {"min_recall": cfg.metrics.min_recall, "min_explained_per_class": cfg.min_explained()}
    overall = gate_check({c.name: metrics[c.name] for c in ok}, classes, explained, **kw)
    per_eps = {
        eps: gate_check({c.name: metrics[c.name] for c in ok if c.eps == eps}, classes, explained, **kw)
        for eps in sorted({c.eps for c in ok})
    }
    return overall, per_eps


# --------------------------------------------------------------------------- aggregate


def _cell_metrics(out: Path, cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """Cell name -> the metrics of its ``model.json``, for the cells that have them."""
    metrics: dict[str, dict[str, Any]] = {}
    for c in cells:
        path = out / "models" / c.name / "model.json"
        if path.exists():
            m = ModelRecord.load(path).metrics
            if m is not None:
                metrics[c.name] = m.to_dict()
    return metrics


def _read_per_image(out: Path) -> pd.DataFrame:
    path = out / "metrics" / "per_image.csv"
    return read_per_image(path) if path.exists() else pd.DataFrame(columns=PER_IMAGE_COLUMNS)


def table_rows(
    cfg: Config, cells: Sequence[Cell], metrics: Mapping[str, dict[str, Any]], per_image: pd.DataFrame
) -> list[dict[str, Any]]:
    """The accuracy, saliency and stability rows of the cells with metrics."""
    ok = [c for c in cells if c.name in metrics]
    mc = cfg.metrics
    seeds_at: dict[float, int] = {}
    for c in ok:
        seeds_at[c.eps] = seeds_at.get(c.eps, 0) + 1
    rows = accuracy_rows(cells, metrics)
    rows += saliency_rows(per_image, {c.name: c.eps for c in ok}, n_boot=mc.n_bootstrap, alpha=mc.alpha,
                          seed=cfg.seed)
    rows += stability_rows(per_image, {e: n for e, n in seeds_at.items() if n >= 2},
                           n_boot=mc.n_bootstrap, alpha=mc.alpha, seed=cfg.seed)
    return rows


def _optimum(
    cfg: Config, per_image: pd.DataFrame, eps_of: Mapping[str, float], optimum: OptimumSpec,
    sub: Path, figure_stem: Path | None, notes: list[str],
) -> OptimumResult | None:
    """The per-image optimal eps, written to ``sub``; None (with a note) when it cannot be computed."""
    band = band_for(optimum.band, cfg.data.image_size, cfg.adversary.eps_reference_size, cfg.adversary.eps_scaling)
    if not len(eps_of) or per_image.empty:
        return None
    try:
        result = optimal_eps(per_image, eps_of, metric=optimum.metric, method=optimum.method,
                             direction=optimum.direction, band=band)
    except DataError as exc:
        notes.append(f"no per-image optimal eps: {exc}")
        return None
    write_optimum(result, sub, figure_stem)
    return result


def _settings(cfg: Config) -> dict[str, str]:
    """How each section of the table is computed (for ``table.json``)."""
    mc = cfg.metrics
    return {
        "accuracy": "mean over seeds; sd_seeds/min/max over seeds",
        "saliency": "per image: mean over the seeds of an eps; mean over images with a percentile-bootstrap "
                    f"{1 - mc.alpha:.0%} CI over images ({mc.n_bootstrap} resamples); sd_seeds: sd of the "
                    "per-seed means",
        "stability": "per image: mean over seed pairs of Spearman / SSIM between maps; CI over images",
        "eps_units": (f"paper units (L2 at {cfg.adversary.eps_reference_size} px, scaled by "
                      f"{cfg.adversary.eps_scaling})" if cfg.adversary.eps_reference_size else "raw radii"),
    }


def aggregate(
    out: str | Path,
    *,
    data: Any = None,
    optimum: OptimumSpec | None = None,
    figure_method: str = "gradient",
    figures: bool = True,
) -> tuple[pd.DataFrame, OptimumResult | None]:
    """Write the sweep's tables and figures from its models and ``metrics/per_image.csv``."""
    out = Path(out)
    cfg = load_run_config(out)
    cells = cells_of(cfg)
    metrics = _cell_metrics(out, cells)
    ok = [c for c in cells if c.name in metrics]
    per_image = _read_per_image(out)
    rows = table_rows(cfg, cells, metrics, per_image)
    # the competence gate (robsal.metrics.gate): saliency aggregates compare eps values, so they
    # mean something only where every cell recognises every class and every class is explained
    overall, per_eps = sweep_gates(out, cfg, ok, metrics)
    for r in rows:
        if r["section"] != "accuracy":
            r["comparable"] = bool(overall.comparable)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    sub = out / SWEEP_SUBDIR
    with atomic_open(sub / "table.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False, float_format="%.6g")

    notes = [f"not comparable: {overall.reason}"] if not overall.comparable else []
    result = _optimum(cfg, per_image, {c.name: c.eps for c in ok}, optimum or OptimumSpec(), sub,
                      out / "figures" / "sweep_optimal_eps" if figures else None, notes)
    figure_paths: list[str] = []
    if figures and len(table):
        figure_paths = [str(p.relative_to(out)) for p in write_figures(out, cfg, table, ok, data, figure_method)]
    doc = {
        "grid": {"eps": sorted({c.eps for c in cells}), "seed": sorted({c.seed for c in cells})},
        "cells": read_json(sub / "cells.json") if (sub / "cells.json").exists() else {},
        "columns": TABLE_COLUMNS,
        "rows": table.to_dict(orient="records"),
        "optimal_eps": result.summary() if result is not None else None,
        "comparable": overall.comparable,
        "gate": {**overall.to_dict(), "per_eps": {f"{e:g}": g.to_dict() for e, g in per_eps.items()}},
        "settings": _settings(cfg),
        "figures": figure_paths,
        "notes": notes,
    }
    write_json(sub / "table.json", json_safe(doc))
    return table, result


def summary_lines(table: pd.DataFrame, result: OptimumResult | None, gate: Mapping[str, Any] | None = None) -> list[str]:
    """Terminal lines: accuracy per eps, the competence gate when it failed, the optimum share."""
    lines = []
    acc = table[table["section"] == "accuracy"]
    for eps, g in acc.groupby("eps", sort=True):
        parts = []
        for _, r in g.iterrows():
            if r["metric"] == "balanced_accuracy":
                continue
            sd = "" if not np.isfinite(r["sd_seeds"]) else f" +- {r['sd_seeds']:.1%}"
            label = "clean" if r["metric"] == "clean_accuracy" else r["metric"].replace("robust_accuracy", "robust")
            parts.append(f"{label} {r['mean']:.1%}{sd}")
        n = int(g["n_seeds"].max())
        lines.append(f"eps {eps:g} ({n} seed{'s' if n != 1 else ''}): " + ", ".join(parts))
    if gate is not None and not gate.get("comparable", True):
        lines.append(f"not comparable: {'; '.join(gate.get('reasons') or [])}")
    if result is not None and result.share_in_band is not None:
        lines.append(
            f"optimal eps per image ({result.method}, {result.metric}): {result.share_in_band:.0%} of "
            f"{result.n_images} images in [{result.band[0]:g}, {result.band[1]:g}]; counts "
            + ", ".join(f"eps {e:g}: {n}" for e, n in result.counts.items())
        )
    return lines
