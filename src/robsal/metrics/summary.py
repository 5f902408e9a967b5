"""Statistics of the per-image metrics and the content of ``RUN/metrics/summary.{csv,json}``.

:func:`summarise`: mean and bootstrap CI per model x method x metric, the paired
difference of every eps > 0 model to the standard model (CI, Wilcoxon p, Holm-adjusted p)
and the verdicts per claim (:mod:`robsal.metrics.stats`). :func:`competence_gates` applies
the competence gate (:mod:`robsal.metrics.gate`) to every compared pair, and
:func:`summary_record` assembles summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robsal.config import Config
from robsal.metrics import gate, stats
from robsal.metrics.inputs import EvaluationInputs
from robsal.metrics.per_image import PerImageResults

# chance levels: reported beside the scores but never tested robust vs standard
NOT_COMPARED = ("lesion_area", "artifact_area_", "border_area")
# secondary metrics (boundary-aware localisation, robsal.metrics.localisation): reported beside
# the primary ones and compared robust vs standard in the paired table, but not part of any
# claim's verdict (they are in no stats.CLAIMS entry)
SECONDARY = ("relevance_mass_dilated", "border_share")
PAIRED_COLUMNS = ["model", "method", "metric", "vs", "n_pairs", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"]


@dataclass
class Statistics:
    """The statistics of one evaluation: the summary.csv table, the paired differences,
    the verdicts (already gated) and the competence gates they went through."""

    table: pd.DataFrame  # summary.csv
    paired: list[stats.Paired]
    verdicts: list[dict[str, Any]]
    gates: dict[tuple[str, str], gate.Gate]  # (robust, standard) -> its gate
    overall: gate.Gate  # every compared model together


def summarise(
    per_image: pd.DataFrame, info: dict[str, dict[str, Any]], standard: str | None, cfg: Config
) -> tuple[pd.DataFrame, list[stats.Paired], list[dict]]:
    """Mean + CI per model/method/metric, paired differences vs standard, verdicts."""
    mc = cfg.metrics
    rows = []
    for (model, method, metric), g in per_image.groupby(["model", "method", "metric"], sort=True):
        vals = g["value"].to_numpy(dtype=np.float64)
        mean, lo, hi = stats.bootstrap_ci(
            vals, n_boot=mc.n_bootstrap, alpha=mc.alpha, seed=stats.stable_seed(cfg.seed, model, method, metric)
        )
        mi = info.get(model, {})
        rows.append(
            {
                "model": model,
                "method": method,
                "metric": metric,
                "n": len(vals),
                "mean": mean,
                "ci_low": lo,
                "ci_high": hi,
                "eps": mi.get("eps"),
                "clean_accuracy": mi.get("clean_accuracy"),
                "balanced_accuracy": mi.get("balanced_accuracy"),
            }
        )
    df = pd.DataFrame(rows)
    paired: list[stats.Paired] = []
    if standard is not None:
        compared = per_image[~per_image["metric"].str.startswith(NOT_COMPARED)]
        secondary = compared["metric"].isin(SECONDARY)
        for robust in sorted(m for m, i in info.items() if i["eps"] > 0):
            # primary metrics (the claims' Holm family) and secondary ones in a family of their own,
            # so adding a secondary metric never changes a verdict
            for part in (compared[~secondary], compared[secondary]):
                paired += stats.paired_differences(
                    part, robust, standard, n_boot=mc.n_bootstrap, alpha=mc.alpha, seed=cfg.seed
                )
    extra = pd.DataFrame(
        [
            {"model": p.robust, "method": p.method, "metric": p.metric, "vs": p.standard, "n_pairs": p.n,
             "diff": p.diff, "diff_ci_low": p.low, "diff_ci_high": p.high, "p_value": p.p, "p_holm": p.p_holm}
            for p in paired
        ],
        columns=PAIRED_COLUMNS,
    )
    if len(df):
        df = df.merge(extra, on=["model", "method", "metric"], how="left")
    return df, paired, stats.verdicts(paired, alpha=mc.alpha)


def competence_gates(
    info: dict[str, dict[str, Any]],
    standard: str | None,
    classes: list[str],
    explained: dict[str, int],
    cfg: Config,
) -> dict[tuple[str, str], gate.Gate]:
    """The competence gate of every (robust, standard) pair that the verdicts compare."""
    if standard is None:
        return {}
    out = {}
    for robust in sorted(m for m, i in info.items() if i["eps"] > 0):
        out[(robust, standard)] = gate.check(
            {m: info[m] for m in (robust, standard)}, classes, explained,
            min_recall=cfg.metrics.min_recall, min_explained_per_class=cfg.min_explained(),
        )
    return out


def statistics(per_image: pd.DataFrame, inputs: EvaluationInputs) -> Statistics:
    """:func:`summarise`, with the verdicts only where both models recognise every class."""
    cfg, info, standard, images = inputs.cfg, inputs.models, inputs.standard, inputs.images
    table, paired, verdicts = summarise(per_image, info, standard, cfg)
    gates = competence_gates(info, standard, images.classes, images.explained, cfg)
    overall = gate.check(info, images.classes, images.explained,
                         min_recall=cfg.metrics.min_recall, min_explained_per_class=cfg.min_explained())
    return Statistics(table, paired, gate.gate_verdicts(verdicts, gates), gates, overall)


def summary_record(inputs: EvaluationInputs, results: PerImageResults, st: Statistics, seconds: float) -> dict[str, Any]:
    """The content of summary.json (NaN still in it: :func:`robsal.utils.json_safe` it to write)."""
    cfg, mc = inputs.cfg, inputs.cfg.metrics
    return {
        "run": str(inputs.run_dir),
        "standard": inputs.standard,
        "models": inputs.models,
        "n_images": len(inputs.images),
        "comparable": st.overall.comparable,
        "gate": {
            **st.overall.to_dict(),
            "rule": f"every compared model recalls every class at >= {mc.min_recall:.2f} on the test split, "
                    f"and every class has >= {cfg.min_explained()} explained images",
            "pairs": [{"robust": r, "standard": s, "comparable": g.comparable, "reasons": g.reasons}
                      for (r, s), g in sorted(st.gates.items())],
        },
        "explained_per_class": inputs.images.explained,
        "secondary_metrics": {
            "metrics": list(SECONDARY),
            "note": "boundary-aware localisation (lesion mask dilated by 15 px at 224 px, scaled; the border "
                    "band): secondary, reported beside the primary metrics with their own Holm family, "
                    "never part of a claim's verdict; border_area is the chance level of border_share",
        },
        "verdicts": st.verdicts,
        "metrics": st.table.to_dict(orient="records"),
        "paired": [p.__dict__ for p in st.paired],
        "sanity": results.sanity,
        "stability": results.stability,
        "faithfulness_curves": results.curves,
        "settings": {
            "n_bootstrap": mc.n_bootstrap,
            "alpha": mc.alpha,
            "ci": "percentile bootstrap of the mean over images",
            "test": "two-sided Wilcoxon signed-rank on paired per-image differences, Holm across metrics",
            "deletion_steps": mc.deletion_steps,
            "deletion_fill": mc.deletion_fill,
            "sanity_images": results.sanity_images,
            "sensitivity_radius": mc.sensitivity_radius,
            "sensitivity_samples": mc.sensitivity_samples,
        },
        "notes": inputs.notes + results.notes,
        "seconds": round(seconds, 2),
    }
