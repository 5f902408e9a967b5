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
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from robsal.config import Config, load_run_config
from robsal.errors import DataError, UserError
from robsal.io import atomic_open, load_npz, write_json
from robsal.metrics import alignment, complexity, faithfulness, gate, localisation, sanity, stability, stats
from robsal.metrics.explainer import ExplainFn, default_explain_fn
from robsal.rundir import ModelMetrics, ModelRecord, writes_run
from robsal.utils import resolve_device

COLUMNS = ["image_id", "model", "method", "metric", "value"]
CONTROL_MODEL = "control"
# chance levels: reported beside the scores but never tested robust vs standard
NOT_COMPARED = ("lesion_area", "artifact_area_", "border_area")
# secondary metrics (boundary-aware localisation, robsal.metrics.localisation): reported beside
# the primary ones and compared robust vs standard in the paired table, but not part of any
# claim's verdict (they are in no stats.CLAIMS entry)
SECONDARY = ("relevance_mass_dilated", "border_share")


class _Records:
    """Collects per-image values as long-format frames."""

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


def load_saliency(run_dir: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{model: {method: npz arrays}} from RUN/saliency, checked to share one image list."""
    root = run_dir / "saliency"
    files = sorted(root.glob("*/*.npz"))
    if not files:
        raise UserError(f"no saliency maps under {root}; run `robsal explain --run {run_dir}` first")
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    ref_ids, ref_file = None, None
    for f in files:
        arrays = load_npz(f)
        missing = [k for k in ("maps", "image_ids", "targets") if k not in arrays]
        if missing:
            raise DataError(f"{f} lacks the array(s) {', '.join(missing)}; re-run `robsal explain`")
        ids = arrays["image_ids"].astype(str)
        if arrays["maps"].ndim != 3 or arrays["maps"].shape[0] != len(ids):
            raise DataError(f"{f}: maps must be (N, H, W) with N = {len(ids)} image ids, got {arrays['maps'].shape}")
        if ref_ids is None:
            ref_ids, ref_file = ids, f
        elif not np.array_equal(ids, ref_ids):
            raise DataError(
                f"{f} explains other images (or another order) than {ref_file}; "
                "re-run `robsal explain` so every model and method share one image list"
            )
        out.setdefault(f.parent.name, {})[f.stem] = arrays
    return out


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


def _map_metrics(
    rec: _Records,
    ids: np.ndarray,
    model: str,
    method: str,
    maps: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray | None,
    has_mask: np.ndarray,
    artifacts: dict[str, np.ndarray],
) -> None:
    """Metrics that need only the map (and image/masks): complexity, localisation, alignment."""
    for name, fn in complexity.COMPLEXITY_METRICS.items():
        rec.add(ids, model, method, name, fn(maps))
    rec.add(ids, model, method, "edge_correlation", alignment.edge_correlation(maps, images))
    if masks is not None and has_mask.any():
        m, sel = masks[has_mask], has_mask
        for name, fn in localisation.LOCALISATION_METRICS.items():
            rec.add(ids[sel], model, method, name, fn(maps[sel], m))
        rec.add(ids[sel], model, method, "lesion_area", localisation.lesion_area(m))
        # secondary (boundary-aware): tolerance = Zhang et al.'s 15 px at 224 px, scaled to the maps' size
        tol = localisation.tolerance_px(maps.shape[-1])
        for name, fn in localisation.SECONDARY_LOCALISATION_METRICS.items():
            rec.add(ids[sel], model, method, name, fn(maps[sel], m, tol))
    for art, amask in artifacts.items():
        present = amask.reshape(len(amask), -1).any(1)
        if present.any():
            rec.add(ids[present], model, method, f"artifact_share_{art}",
                    localisation.artifact_share(maps[present], amask[present]))
            rec.add(ids[present], model, method, f"artifact_area_{art}", localisation.lesion_area(amask[present]))


@writes_run
def evaluate_run(
    run_dir: str | Path,
    *,
    data=None,  # noqa: ANN001  PreparedData | None
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
    mc = cfg.metrics
    dev = resolve_device(device if device is not None else cfg.device)
    show = progress and sys.stderr.isatty()
    sal = load_saliency(run_dir)
    if data is None:
        from robsal.data import load_run_data

        data = load_run_data(run_dir)
    first = next(iter(next(iter(sal.values())).values()))
    ids = first["image_ids"].astype(str)
    rows = data.rows_of(ids)
    x_cpu, _ = data.batch(rows, "cpu")  # (N, 3, S, S) in [0, 1]
    images = x_cpu.numpy()
    n, _, h, w = images.shape
    for model, methods in sal.items():
        for method, arr in methods.items():
            if arr["maps"].shape[1:] != (h, w):
                raise DataError(
                    f"saliency/{model}/{method}.npz has {arr['maps'].shape[1:]} maps but the images are "
                    f"{h}x{w}; re-run `robsal explain` on this run"
                )
    masks = data.masks[rows].astype(bool) if data.masks is not None else None
    has_mask = np.asarray(data.has_mask)[rows].astype(bool) if masks is not None else np.zeros(n, bool)
    artifacts = {k: np.asarray(v)[rows].astype(bool) for k, v in (data.artifact_masks or {}).items()}

    notes: list[str] = []
    if masks is None or not has_mask.any():
        notes.append("no lesion masks for the explained images: localisation metrics were skipped")
    info = {name: model_info(run_dir, cfg, name) for name in sal}
    standard = pick_standard(info)
    if standard is None:
        notes.append("no eps = 0 model in the run: no robust-vs-standard comparison")
    explain = explain_fn if explain_fn is not None else default_explain_fn(cfg)

    rec = _Records()
    tasks = [(m, k) for m in sal for k in sal[m]]
    bar = tqdm(total=len(tasks) + 1, desc="metrics", disable=not show)
    # controls: pseudo-methods scored like any map
    controls = {
        "control_sobel": alignment.sobel_map(images),
        "control_gaussian": alignment.gaussian_map(n, h, w),
    }
    for cname, cmaps in controls.items():
        _map_metrics(rec, ids, CONTROL_MODEL, cname, cmaps, images, masks, has_mask, artifacts)
    bar.update(1)

    curves_out: dict[str, dict[str, dict[str, list[float]]]] = {}
    sanity_out: dict[str, dict[str, Any]] = {}
    k_sub = min(mc.sanity_images, n)
    if mc.sanity and k_sub < 2:
        notes.append(f"sanity check skipped: it needs 2 explained images, the run has {n}")
    # sanity / max-sensitivity images: spread evenly over the (class-ordered) explained images
    sub = np.unique(np.linspace(0, n - 1, k_sub).round().astype(np.int64)) if k_sub >= 1 else np.zeros(0, np.int64)
    sub_t = torch.from_numpy(sub).to(dev)
    bs = cfg.saliency.batch_size
    for model_name in sal:
        net = None
        if info[model_name]["has_weights"]:
            from robsal.models import load as load_model

            net = load_model(run_dir / "models" / model_name, device=dev)
        else:
            notes.append(f"{model_name}: no weights in models/{model_name}; model-based metrics skipped")
        x = x_cpu.to(dev)
        for method, arr in sal[model_name].items():
            bar.set_postfix_str(f"{model_name}/{method}")
            maps = arr["maps"].astype(np.float64)
            t_m = torch.from_numpy(arr["targets"].astype(np.int64)).to(dev)
            _map_metrics(rec, ids, model_name, method, maps, images, masks, has_mask, artifacts)
            if net is not None:
                if method == "gradient":
                    rec.add(ids, model_name, method, "cos_input_gradient", alignment.cos_input_gradient(net, x, t_m))
                if mc.faithfulness:
                    curves = faithfulness.perturbation_curves(
                        net, x, t_m, maps, steps=mc.deletion_steps, fill=mc.deletion_fill, batch_size=mc.batch_size
                    )
                    for metric, vals in faithfulness.faithfulness_scores(curves).items():
                        rec.add(ids, model_name, method, metric, vals)
                    curves_out.setdefault(model_name, {})[method] = {
                        p: c.mean(0).tolist() for p, c in curves.items()
                    }
                if mc.sanity and k_sub >= 2:
                    res = sanity.cascading_randomisation(
                        net, x[sub_t], t_m[sub_t], method, explain, seed=cfg.seed, batch_size=bs, image_ids=ids[sub]
                    )
                    for stage in res.stages:
                        rec.add(ids[sub], model_name, method, f"sanity_spearman_{stage}", res.spearman[stage])
                        rec.add(ids[sub], model_name, method, f"sanity_ssim_{stage}", res.ssim[stage])
                    sanity_out.setdefault(model_name, {})[method] = res.summary()
                if mc.sensitivity:
                    ms = stability.max_sensitivity(
                        net, x[sub_t], t_m[sub_t], method, explain,
                        radius=mc.sensitivity_radius, samples=mc.sensitivity_samples, seed=cfg.seed, batch_size=bs,
                        image_ids=ids[sub],
                    )
                    rec.add(ids[sub], model_name, method, "max_sensitivity", ms)
            bar.update(1)
        del net
    bar.close()

    # seed stability from the stored maps (same images, same order)
    stability_out: dict[str, Any] = {}
    groups = stability.seed_groups({m: i["eps"] for m, i in info.items()}) if mc.stability else {}
    if not mc.stability:
        stability_out["note"] = "seed stability disabled (metrics.stability: false)"
    elif not groups:
        stability_out["note"] = (
            "no seed stability: the run has no two models with the same eps that differ only in "
            "their seed (add e.g. {name: standard_s1, eps: 0, seed: 1} to models)"
        )
    for eps, names in groups.items():
        label = f"seeds_eps{eps:g}"
        common = sorted(set.intersection(*(set(sal[nm]) for nm in names)))
        stability_out[label] = {"eps": eps, "models": names, "methods": {}}
        for method in common:
            sims = stability.pairwise_similarity([sal[nm][method]["maps"].astype(np.float64) for nm in names])
            for metric, vals in sims.items():
                rec.add(ids, label, method, metric, vals)
            stability_out[label]["methods"][method] = {k: sanity.mean_defined(v) for k, v in sims.items()}

    per_image = rec.frame()
    out_dir = run_dir / "metrics"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "per_image.csv", "w", encoding="utf-8", newline="") as fh:
        per_image.to_csv(fh, index=False, float_format="%.8g")

    summary_df, paired, verdicts = summarise(per_image, info, standard, cfg)
    # the competence gate: verdicts only where both models recognise every class
    explained = {c: int(k) for c, k in zip(data.classes, np.bincount(data.labels[rows], minlength=len(data.classes)))}
    gates = competence_gates(info, standard, list(data.classes), explained, cfg)
    verdicts = gate.gate_verdicts(verdicts, gates)
    overall = gate.check(info, list(data.classes), explained,
                         min_recall=mc.min_recall, min_explained_per_class=cfg.min_explained())
    with atomic_open(out_dir / "summary.csv", "w", encoding="utf-8", newline="") as fh:
        summary_df.to_csv(fh, index=False, float_format="%.6g")
    summary = {
        "run": str(run_dir),
        "standard": standard,
        "models": info,
        "n_images": int(n),
        "comparable": overall.comparable,
        "gate": {
            **overall.to_dict(),
            "rule": f"every compared model recalls every class at >= {mc.min_recall:.2f} on the test split, "
                    f"and every class has >= {cfg.min_explained()} explained images",
            "pairs": [{"robust": r, "standard": st, "comparable": g.comparable, "reasons": g.reasons}
                      for (r, st), g in sorted(gates.items())],
        },
        "explained_per_class": explained,
        "secondary_metrics": {
            "metrics": list(SECONDARY),
            "note": "boundary-aware localisation (lesion mask dilated by 15 px at 224 px, scaled; the border "
                    "band): secondary, reported beside the primary metrics with their own Holm family, "
                    "never part of a claim's verdict; border_area is the chance level of border_share",
        },
        "verdicts": verdicts,
        "metrics": _records(summary_df),
        "paired": [p.__dict__ for p in paired],
        "sanity": sanity_out,
        "stability": stability_out,
        "faithfulness_curves": curves_out,
        "settings": {
            "n_bootstrap": mc.n_bootstrap,
            "alpha": mc.alpha,
            "ci": "percentile bootstrap of the mean over images",
            "test": "two-sided Wilcoxon signed-rank on paired per-image differences, Holm across metrics",
            "deletion_steps": mc.deletion_steps,
            "deletion_fill": mc.deletion_fill,
            "sanity_images": k_sub,
            "sensitivity_radius": mc.sensitivity_radius,
            "sensitivity_samples": mc.sensitivity_samples,
        },
        "notes": notes,
        "seconds": round(time.time() - t0, 2),
    }
    write_json(out_dir / "summary.json", _no_nan(summary))

    from robsal.metrics import plots

    plots.write_plots(run_dir, per_image, summary)
    return out_dir


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
            {m: info[m] for m in (robust, standard)}, classes, explained, min_recall=cfg.metrics.min_recall, min_explained_per_class=cfg.min_explained()
        )
    return out


def _no_nan(obj: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    recs = df.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in recs]


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
        columns=["model", "method", "metric", "vs", "n_pairs", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"],
    )
    if len(df):
        df = df.merge(extra, on=["model", "method", "metric"], how="left")
    return df, paired, stats.verdicts(paired, alpha=mc.alpha)
