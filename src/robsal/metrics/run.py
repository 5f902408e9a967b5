"""``evaluate_run``: score every saved saliency map of a run and summarise with statistics.

Reads ``RUN/saliency/<model>/<method>.npz`` (maps (N, H, W) = sum over RGB of |a|, the
same images in the same order for every model and method), the images and masks of the
run (:func:`robsal.data.load_run_data`) and, for the metrics that need the model,
``RUN/models/<model>/``. Writes (atomically):

- ``RUN/metrics/per_image.csv``: long format ``image_id,model,method,metric,value``;
  undefined values (e.g. AUROC of an image without a lesion mask) are left out, never
  written as NaN. Pseudo-models: ``control`` (methods ``control_sobel``,
  ``control_gaussian``; the maps do not depend on a model) and ``seeds_eps<eps>``
  (seed stability of models that differ only in their seed).
- ``RUN/metrics/summary.csv``: one row per model x method x metric: n, mean, bootstrap
  CI, the model's eps and clean accuracy, and for robust models the paired difference to
  the standard model with its CI, Wilcoxon p and Holm-adjusted p.
- ``RUN/metrics/summary.json``: the same plus verdicts per claim, sanity curves, seed
  stability (or why there is none), mean deletion/insertion curves, settings, notes.
- plots under ``RUN/figures/`` (:mod:`robsal.metrics.plots`).

The standard model is the eps = 0 model (``standard`` if several); every eps > 0 model is
compared with it.

The stage is four steps, each with a typed result: :func:`load_inputs` (an
:class:`~robsal.metrics.inputs.EvaluationInputs`) -> :func:`robsal.metrics.per_image.compute_per_image`
(a :class:`~robsal.metrics.per_image.PerImageResults`) -> :func:`robsal.metrics.summary.statistics`
(a :class:`~robsal.metrics.summary.Statistics`) -> :func:`robsal.metrics.plots.write_plots`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robsal.config import Config, load_run_config
from robsal.data import PreparedData, load_run_data
from robsal.io import atomic_open, write_json
from robsal.metrics.explainer import ExplainFn, default_explain_fn
from robsal.metrics.inputs import EvaluationInputs, explained_images, load_saliency
from robsal.metrics.per_image import compute_per_image
from robsal.metrics.plots import write_plots
from robsal.metrics.summary import statistics, summary_record
from robsal.rundir import ModelMetrics, ModelRecord, writes_run
from robsal.utils import json_safe, resolve_device


def model_info(run_dir: Path, cfg: Config, name: str) -> dict[str, Any]:
    """eps (paper units), seed and accuracies of a model, from model.json (else the config)."""
    path = run_dir / "models" / name / "model.json"
    if path.exists():
        rec = ModelRecord.load(path)
        m = rec.metrics or ModelMetrics()
        eps = rec.eps if rec.eps is not None else (
            cfg.model_spec(name).eps if name in [s.name for s in cfg.models] else 0.0)
        return {
            "eps": float(eps),
            "seed": rec.seed,
            "clean_accuracy": m.clean_accuracy,
            "balanced_accuracy": m.balanced_accuracy,
            "per_class_accuracy": m.per_class_accuracy,  # class -> recall on the test split
            "has_weights": (run_dir / "models" / name / "model.safetensors").exists(),
        }
    spec = cfg.model_spec(name)  # ConfigError naming the model if the config lacks it
    return {
        "eps": float(spec.eps),
        "seed": spec.seed if spec.seed is not None else cfg.seed,
        "clean_accuracy": None,
        "balanced_accuracy": None,
        "per_class_accuracy": None,
        "has_weights": False,
    }


def pick_standard(models: dict[str, dict[str, Any]]) -> str | None:
    zero = sorted(n for n, m in models.items() if m["eps"] == 0)
    if not zero:
        return None
    return "standard" if "standard" in zero else zero[0]


def load_inputs(run_dir: Path, cfg: Config, data: PreparedData | None = None) -> EvaluationInputs:
    """The saliency maps of ``run_dir``, the images they explain (from ``data``, None = the
    run's data) and the records of their models, with notes on what is missing."""
    saliency = load_saliency(run_dir, len(cfg.data.classes))
    images = explained_images(saliency, data if data is not None else load_run_data(run_dir))
    notes: list[str] = []
    if images.masks is None or not images.has_mask.any():
        notes.append("no lesion masks for the explained images: localisation metrics were skipped")
    models = {name: model_info(run_dir, cfg, name) for name in saliency}
    standard = pick_standard(models)
    if standard is None:
        notes.append("no eps = 0 model in the run: no robust-vs-standard comparison")
    return EvaluationInputs(run_dir, cfg, saliency, images, models, standard, notes)


def _write_csv(path: Path, frame: pd.DataFrame, float_format: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False, float_format=float_format)


@writes_run
def evaluate_run(
    run_dir: str | Path,
    *,
    data: PreparedData | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    explain_fn: ExplainFn | None = None,
) -> Path:
    """Compute every metric for every saved map of ``run_dir``; returns ``RUN/metrics``.

    ``data``: the run's PreparedData (None = :func:`robsal.data.load_run_data`).
    ``explain_fn``: how to recompute maps for sanity/max-sensitivity (None = the run's
    :func:`robsal.saliency.explain` with its saliency options).
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    dev = resolve_device(device if device is not None else cfg.device)
    inputs = load_inputs(run_dir, cfg, data)
    explain = explain_fn if explain_fn is not None else default_explain_fn(cfg)
    results = compute_per_image(inputs, explain, dev, progress=progress)
    out_dir = run_dir / "metrics"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "per_image.csv", results.frame, "%.8g")
    stats = statistics(results.frame, inputs)
    _write_csv(out_dir / "summary.csv", stats.table, "%.6g")
    write_json(out_dir / "summary.json", json_safe(summary_record(inputs, results, stats, time.time() - t0)))
    write_plots(run_dir / "figures", results.frame, results.curves, results.sanity)
    return out_dir
