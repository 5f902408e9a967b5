"""The per-image metrics of every saved map: the long-format frame of ``RUN/metrics/per_image.csv``.

Rows ``image_id,model,method,metric,value``; undefined values (e.g. AUROC of an image
without a lesion mask) are left out, never kept as NaN. Besides the maps of the run's
models it scores the pseudo-model :data:`CONTROL_MODEL` (methods ``control_sobel``,
``control_gaussian``: maps that do not depend on a model) and ``seeds_eps<eps>`` (seed
stability of models that differ only in their seed). Rows come in a fixed order: controls,
then each model's methods as stored, then seed stability.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from robsal.metrics import alignment, complexity, faithfulness, localisation, sanity, stability
from robsal.metrics.explainer import ExplainFn
from robsal.metrics.inputs import EvaluationInputs, ExplainedImages
from robsal.models import load as load_model

COLUMNS = ["image_id", "model", "method", "metric", "value"]
CONTROL_MODEL = "control"

Curves = dict[str, dict[str, dict[str, list[float]]]]
"""model -> method -> path (``deletion``, ``deletion_lerf``, ``insertion``) -> mean curve."""


class PerImageRecords:
    """Collects per-image values as long-format frames (NaN values are dropped)."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def add(self, ids: np.ndarray, model: str, method: str, metric: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        ok = ~np.isnan(values)
        if not ok.any():
            return
        self.frames.append(
            pd.DataFrame(
                {
                    "image_id": np.asarray(ids)[ok].astype(str),
                    "model": model,
                    "method": method,
                    "metric": metric,
                    "value": values[ok],
                }
            )
        )

    def frame(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=COLUMNS)
        return pd.concat(self.frames, ignore_index=True)[COLUMNS]


@dataclass
class PerImageResults:
    """What :func:`compute_per_image` measured: the per-image frame and the stage's curves."""

    frame: pd.DataFrame  # COLUMNS, one row per defined value
    curves: Curves = field(default_factory=dict)  # mean deletion/insertion curves
    sanity: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> method -> SanityResult.summary()
    stability: dict[str, Any] = field(default_factory=dict)  # seeds_eps<eps> -> means, or a note
    sanity_images: int = 0  # images of the sanity check and max-sensitivity
    notes: list[str] = field(default_factory=list)


def map_metrics(
    rec: PerImageRecords, model: str, method: str, maps: np.ndarray, images: ExplainedImages
) -> None:
    """Metrics that need only the map (and image/masks): complexity, localisation, alignment."""
    ids, masks, has_mask = images.ids, images.masks, images.has_mask
    for name, fn in complexity.COMPLEXITY_METRICS.items():
        rec.add(ids, model, method, name, fn(maps))
    rec.add(ids, model, method, "edge_correlation", alignment.edge_correlation(maps, images.pixels))
    if masks is not None and has_mask.any():
        m, sel = masks[has_mask], has_mask
        for name, fn in localisation.LOCALISATION_METRICS.items():
            rec.add(ids[sel], model, method, name, fn(maps[sel], m))
        rec.add(ids[sel], model, method, "lesion_area", localisation.lesion_area(m))
        # secondary (boundary-aware): tolerance = Zhang et al.'s 15 px at 224 px, scaled to the maps' size
        tol = localisation.tolerance_px(maps.shape[-1])
        for name, fn in localisation.SECONDARY_LOCALISATION_METRICS.items():
            rec.add(ids[sel], model, method, name, fn(maps[sel], m, tol))
    for art, amask in images.artifacts.items():
        present = amask.reshape(len(amask), -1).any(1)
        if present.any():
            rec.add(ids[present], model, method, f"artifact_share_{art}",
                    localisation.artifact_share(maps[present], amask[present]))
            rec.add(ids[present], model, method, f"artifact_area_{art}", localisation.lesion_area(amask[present]))


def control_metrics(rec: PerImageRecords, images: ExplainedImages) -> None:
    """The controls, pseudo-methods of :data:`CONTROL_MODEL` scored like any map."""
    n, _, h, w = images.x.shape
    controls = {
        "control_sobel": alignment.sobel_map(images.pixels),
        "control_gaussian": alignment.gaussian_map(n, h, w),
    }
    for cname, cmaps in controls.items():
        map_metrics(rec, CONTROL_MODEL, cname, cmaps, images)


def sanity_subset(n: int, k: int) -> np.ndarray:
    """Positions of the ``k`` sanity / max-sensitivity images, spread evenly over the
    (class-ordered) ``n`` explained images."""
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)) if k >= 1 else np.zeros(0, np.int64)


def model_based_metrics(
    rec: PerImageRecords,
    out: PerImageResults,
    inputs: EvaluationInputs,
    model: str,
    method: str,
    net: torch.nn.Module,
    x: torch.Tensor,
    sub: np.ndarray,
    explain: ExplainFn,
) -> None:
    """Metrics of one stored map that need the model: input-gradient alignment,
    faithfulness, the sanity cascade and max-sensitivity (as ``metrics`` switches them on)."""
    cfg, mc, ids = inputs.cfg, inputs.cfg.metrics, inputs.images.ids
    arr = inputs.saliency[model][method]
    maps = arr["maps"].astype(np.float64)
    t_m = torch.from_numpy(arr["targets"].astype(np.int64)).to(x.device)
    sub_t = torch.from_numpy(sub).to(x.device)
    bs = cfg.saliency.batch_size
    if method == "gradient":
        rec.add(ids, model, method, "cos_input_gradient", alignment.cos_input_gradient(net, x, t_m))
    if mc.faithfulness:
        curves = faithfulness.perturbation_curves(
            net, x, t_m, maps, steps=mc.deletion_steps, fill=mc.deletion_fill, batch_size=mc.batch_size
        )
        for metric, vals in faithfulness.faithfulness_scores(curves).items():
            rec.add(ids, model, method, metric, vals)
        out.curves.setdefault(model, {})[method] = {p: c.mean(0).tolist() for p, c in curves.items()}
    if mc.sanity and out.sanity_images >= 2:
        res = sanity.cascading_randomisation(
            net, x[sub_t], t_m[sub_t], method, explain, seed=cfg.seed, batch_size=bs, image_ids=ids[sub]
        )
        for stage in res.stages:
            rec.add(ids[sub], model, method, f"sanity_spearman_{stage}", res.spearman[stage])
            rec.add(ids[sub], model, method, f"sanity_ssim_{stage}", res.ssim[stage])
        out.sanity.setdefault(model, {})[method] = res.summary()
    if mc.sensitivity:
        ms = stability.max_sensitivity(
            net, x[sub_t], t_m[sub_t], method, explain,
            radius=mc.sensitivity_radius, samples=mc.sensitivity_samples, seed=cfg.seed, batch_size=bs,
            image_ids=ids[sub],
        )
        rec.add(ids[sub], model, method, "max_sensitivity", ms)


def seed_stability(rec: PerImageRecords, inputs: EvaluationInputs) -> dict[str, Any]:
    """Seed stability from the stored maps (same images, same order) of models that differ
    only in their seed; returns the ``stability`` part of summary.json."""
    mc, sal, ids = inputs.cfg.metrics, inputs.saliency, inputs.images.ids
    out: dict[str, Any] = {}
    groups = stability.seed_groups({m: i["eps"] for m, i in inputs.models.items()}) if mc.stability else {}
    if not mc.stability:
        out["note"] = "seed stability disabled (metrics.stability: false)"
    elif not groups:
        out["note"] = (
            "no seed stability: the run has no two models with the same eps that differ only in "
            "their seed (add e.g. {name: standard_s1, eps: 0, seed: 1} to models)"
        )
    for eps, names in groups.items():
        label = f"seeds_eps{eps:g}"
        common = sorted(set.intersection(*(set(sal[nm]) for nm in names)))
        out[label] = {"eps": eps, "models": names, "methods": {}}
        for method in common:
            sims = stability.pairwise_similarity([sal[nm][method]["maps"].astype(np.float64) for nm in names])
            for metric, vals in sims.items():
                rec.add(ids, label, method, metric, vals)
            out[label]["methods"][method] = {k: sanity.mean_defined(v) for k, v in sims.items()}
    return out


def compute_per_image(
    inputs: EvaluationInputs, explain: ExplainFn, device: torch.device, *, progress: bool = True
) -> PerImageResults:
    """Every per-image metric of every stored map, the controls and seed stability.

    ``explain``: how to recompute maps for sanity / max-sensitivity. Models without weights
    get the map-only metrics, with a note.
    """
    mc, sal = inputs.cfg.metrics, inputs.saliency
    n = len(inputs.images)
    rec = PerImageRecords()
    out = PerImageResults(frame=pd.DataFrame(columns=COLUMNS), sanity_images=min(mc.sanity_images, n))
    if mc.sanity and out.sanity_images < 2:
        out.notes.append(f"sanity check skipped: it needs 2 explained images, the run has {n}")
    sub = sanity_subset(n, out.sanity_images)
    bar = tqdm(total=sum(len(m) for m in sal.values()) + 1, desc="metrics",
               disable=not (progress and sys.stderr.isatty()))
    control_metrics(rec, inputs.images)
    bar.update(1)
    x = inputs.images.x.to(device)
    for model, methods in sal.items():
        net = None
        if inputs.models[model]["has_weights"]:
            net = load_model(inputs.run_dir / "models" / model, device=device)
        else:
            out.notes.append(f"{model}: no weights in models/{model}; model-based metrics skipped")
        for method, arr in methods.items():
            bar.set_postfix_str(f"{model}/{method}")
            map_metrics(rec, model, method, arr["maps"].astype(np.float64), inputs.images)
            if net is not None:
                model_based_metrics(rec, out, inputs, model, method, net, x, sub, explain)
            bar.update(1)
        del net
    bar.close()
    out.stability = seed_stability(rec, inputs)
    out.frame = rec.frame()
    return out
