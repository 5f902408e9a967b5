"""Contexts of the report's result sections: metrics and statistics (metrics/summary.json and
summary.csv), the run's figures, placed by ``figures/index.json``, and the limitations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robsal.report.collect import RunContents
from robsal.report.context import Page
from robsal.report.format import Cell, Table, cell, is_number, json_blocks, records_table
from robsal.report.sections_run import gate_table
from robsal.rundir import Summary
from robsal.utils import json_safe

# summary.json keys (robsal.metrics.run.evaluate_run) shown by the plots instead of as tables
SUMMARY_PLOTTED = ("faithfulness_curves", "sanity")
SUMMARY_SHOWN = ("gate", "comparable", "explained_per_class", "verdicts", "paired", "metrics", "models", "notes",
                 "settings", "stability", "run", "standard", "n_images", "seconds")
PAIRED_COLUMNS = ("robust", "standard", "method", "metric", "n", "diff", "low", "high", "p", "p_holm")
PAIRED_HEADER = {"low": "CI low", "high": "CI high", "p": "p (Wilcoxon)", "p_holm": "p (Holm)"}
# report sections that show the figures recorded for them (figures/index.json); others go to "figures"
FIGURE_SECTIONS = ("dataset", "training", "saliency", "failures", "metrics", "figures")

# --------------------------------------------------------------------------- metrics


def metrics(page: Page, figures: list[dict[str, Any]]) -> dict[str, Any]:
    run = page.run
    alpha = 0.05
    if run.config and isinstance(run.config.get("metrics"), dict):
        a = run.config["metrics"].get("alpha")
        alpha = float(a) if is_number(a) else alpha
    csv = None
    if run.summary_csv is not None:
        records = [{str(k): json_safe(v) for k, v in rec.items()} for rec in run.summary_csv.to_dict(orient="records")]
        csv = {"n": len(run.summary_csv), "table": records_table(records)}
    return {"none": run.summary is None and run.summary_csv is None,
            "summary": summary(run.summary, alpha) if run.summary is not None else None,
            "csv": csv, "figures": figures}


def summary(s: Summary, alpha: float) -> dict[str, Any]:
    """summary.json: verdicts per claim, paired differences, means with CIs, then the rest."""
    facts = [f"{k}: {v}" for k, v in (("standard", s.standard), ("n_images", s.n_images)) if v is not None]
    verdicts = [v.to_dict() for v in s.verdicts]
    cols = [c for c in ("claim", "robust", "standard", "method", "verdict", "line") if any(c in v for v in verdicts)]
    means = None
    if s.metrics:
        cols_m = [c for c in ("model", "method", "metric", "n", "mean", "ci_low", "ci_high") if any(c in m for m in s.metrics)]
        means = {"n": len(s.metrics), "table": records_table(s.metrics, cols_m or None)}
    rest = {k: v for k, v in s.to_dict().items() if k not in SUMMARY_SHOWN + SUMMARY_PLOTTED}
    return {
        "facts": "; ".join(facts), "gate": gate_table(s.gate), "alpha": alpha,
        "verdicts": records_table(verdicts, cols) if verdicts else None,
        "verdicts_other": None if verdicts else json_blocks(verdicts),
        "paired": paired_table(s.paired, alpha) if s.paired else None,
        "paired_other": json_blocks(s.paired) if s.paired is not None and not s.paired else None,
        "means": means,
        "means_other": json_blocks(s.metrics) if s.metrics is not None and not s.metrics else None,
        "models": json_blocks({n: m.to_dict() for n, m in s.models.items()}),
        "notes": json_blocks(s.notes) if s.notes else None,
        "stability": json_blocks(s.stability, depth=1) if s.stability else None,
        "settings": json_blocks(s.settings, depth=1) if s.settings is not None else None,
        "rest": json_blocks(rest, depth=1) if rest else None,
    }


def paired_table(paired: list[dict[str, Any]], alpha: float) -> Table:
    """Robust - standard differences per image; rows with Holm-corrected p below alpha in bold."""
    cols = [c for c in PAIRED_COLUMNS if any(c in p for p in paired)]
    if not cols:
        return records_table(paired)
    rows = []
    for p in paired:
        ph = p.get("p_holm")
        sig = is_number(ph) and ph < alpha
        rows.append([Cell(c.text, c.cls, strong=True) if sig else c for c in (cell(p.get(k)) for k in cols)])
    text_cols = [i for i, c in enumerate(cols) if c in ("robust", "standard", "method", "metric")]
    return Table([PAIRED_HEADER.get(c, c) for c in cols], rows, text_cols, scroll=True)


# --------------------------------------------------------------------------- figures


def place_figures(page: Page) -> dict[str, Any]:
    """The run's figures per report section, as ``figures/index.json`` records them.

    Returns {"by_section": {section: [figure, ...]}, "indexed": bool, "absent": "paths, ..."}. A
    figure in figures/ that the index does not name goes to the section of other figures; a run
    folder without an index (an older robsal) gets every figure there, in file-name order.
    """
    run = page.run
    by_section: dict[str, list[dict[str, Any]]] = {s: [] for s in FIGURE_SECTIONS}
    if run.figure_index is None:
        by_section["figures"] = [figure(page, p, None) for p in run.figures]
        return {"by_section": by_section, "indexed": False, "absent": ""}
    named, absent = set(), []
    for entry in run.figure_index.figures:
        path = run.run_dir / entry.path
        if path.suffix.lower() != ".png":
            continue
        named.add(path.resolve())
        if not path.is_file():
            absent.append(entry.path)
            continue
        section = entry.section if entry.section in FIGURE_SECTIONS else "figures"
        by_section[section].append(figure(page, path, entry.caption))
    by_section["figures"] += [figure(page, p, None) for p in run.figures if p.resolve() not in named]
    return {"by_section": by_section, "indexed": True, "absent": ", ".join(absent)}


def figure(page: Page, path: Path, caption: str | None) -> dict[str, Any]:
    rel = path.relative_to(page.run.run_dir).as_posix() if path.is_relative_to(page.run.run_dir) else path.name
    return {"src": page.store.add(path.read_bytes(), path.stem), "alt": path.name, "path": rel, "caption": caption}


# --------------------------------------------------------------------------- limitations


def limitations(run: RunContents) -> list[str]:
    cfg_data = run.config.get("data") if run.config else None
    synthetic = isinstance(cfg_data, dict) and cfg_data.get("source") == "synthetic"
    items = []
    if synthetic:
        items.append(
            "This run used robsal's built-in synthetic images. They imitate dermoscopy (lesions, hair, rulers, dark "
            "corners) but are not clinical data: nothing here says how a model behaves on real patients."
        )
    return items + [
        "A saliency map is not a diagnosis and not a proof of why the model decided: it shows which pixels a "
        "particular attribution method marks as influential for one model. Different methods and different "
        "training seeds give different maps (paper Appendix C.2).",
        "Adversarial training buys sharper maps at the cost of clean accuracy (see the accuracy table). Robust "
        "maps can still highlight artifacts or be noisy (paper Figure 2, and the failure cases above).",
        "The metrics compare maps with lesion and artifact masks. A mask is a proxy for what a clinician would look "
        "at; a map that stays inside the lesion can still rely on the wrong features.",
        "Confidence intervals and p-values describe the images explained here (few per class); with so few images "
        "an absence of a significant difference is not evidence of no difference.",
        "No part of this report is fit for clinical use.",
    ]
