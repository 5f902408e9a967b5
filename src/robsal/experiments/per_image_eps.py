"""Per-image optimal adversary power (paper Appendix C.3, Figure 11).

The paper's hypothesis: "the power of the adversary is an image-specific hyper-parameter
of the explanations, where the optimal value gives the clearest explanation", and "as a
rough empirical estimation ... the optimal values tend to be between eps = 3 and eps = 5"
(L2 at 224 px). Here the "clearest explanation" is made measurable: for every explained
image, the optimum is the training eps whose map scores best on one per-image metric of
``RUN/metrics/per_image.csv`` (default: relevance mass on the lesion, Gradient maps).

Rules, fixed in advance:

* A model's value for an image is its per-image metric value; with several seeds per eps
  the value of an eps is the mean over its seeds (seeds are replicates, not candidates).
* "Best" is the largest value for metrics where higher is better (relevance mass, Gini,
  ...) and the smallest where lower is better (entropy, total variation, ...):
  :data:`DIRECTIONS`; other metrics need an explicit direction.
* Ties (exactly equal values) go to the smallest eps.
* Only images with a value at every eps of the sweep take part (a localisation metric is
  undefined without a lesion mask); the others are counted as excluded.
* The band (default [3, 5], both ends included) is in paper units, like every eps of a
  config. When a config gives raw radii (``adversary.eps_reference_size: null``) the
  band is scaled to the input size: ``band * image_size / 224`` (:func:`band_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robsal.errors import ConfigError, DataError
from robsal.io import atomic_open, write_json
from robsal.saliency.figures import save_figure

PAPER_BAND = (3.0, 5.0)
PAPER_REFERENCE_SIZE = 224

# metric -> which end is better ("max": higher is better)
DIRECTIONS: dict[str, str] = {
    "relevance_mass": "max",
    "relevance_mass_lift": "max",
    "relevance_rank": "max",
    "pointing_game": "max",
    "auroc": "max",
    "gini": "max",
    "spatial_autocorrelation": "max",
    "entropy": "min",
    "total_variation": "min",
    "insertion_auc": "max",
    "deletion_auc": "min",
    "deletion_gap": "max",
    "max_sensitivity": "min",
}


def metric_direction(metric: str, direction: str | None = None) -> str:
    """``max`` or ``min`` for ``metric``: the given ``direction``, else :data:`DIRECTIONS`."""
    if direction is not None:
        if direction not in ("max", "min"):
            raise ConfigError(f"direction must be 'max' or 'min', got {direction!r}")
        return direction
    if metric not in DIRECTIONS:
        raise ConfigError(
            f"direction: metric {metric!r} has no known direction; say whether higher or lower is better "
            "(direction=max or direction=min)"
        )
    return DIRECTIONS[metric]


def band_for(
    band: tuple[float, float], image_size: int, reference_size: int | None, scaling: str = "side"
) -> tuple[float, float]:
    """The band in the units of the config's eps values.

    With ``reference_size`` set (the default, 224) config eps values are paper units and the
    band is returned unchanged. With ``reference_size`` None the config's eps are raw L2
    radii at ``image_size``; the paper band then scales like ``Config.eps_l2`` with the
    ``scaling`` rule (``adversary.eps_scaling``: ``side`` or ``pixels``).
    """
    lo, hi = float(band[0]), float(band[1])
    if lo > hi:
        raise ConfigError(f"band [{lo:g}, {hi:g}]: the lower end is above the upper end")
    if reference_size is None:
        f = image_size / PAPER_REFERENCE_SIZE
        f = f if scaling == "side" else f**2
        return lo * f, hi * f
    return lo, hi


@dataclass
class OptimumResult:
    """Per-image optimal eps and its distribution."""

    metric: str
    method: str
    direction: str
    band: tuple[float, float]
    eps_values: list[float]
    per_image: pd.DataFrame  # image_id, best_eps, best_value, then one column per eps (mean over seeds)
    counts: dict[float, int]  # eps -> number of images whose optimum it is
    n_images: int
    n_excluded: int
    share_in_band: float | None  # None when no image qualifies
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "method": self.method,
            "direction": self.direction,
            "band": list(self.band),
            "eps_values": self.eps_values,
            "counts": {f"{e:g}": n for e, n in self.counts.items()},
            "n_images": self.n_images,
            "n_excluded": self.n_excluded,
            "share_in_band": self.share_in_band,
            "rule": "per image, the eps whose map (mean over seeds) scores best; ties -> smallest eps",
            "notes": self.notes,
        }


def optimal_eps(
    per_image: pd.DataFrame,
    eps_of: Mapping[str, float],
    *,
    metric: str = "relevance_mass",
    method: str = "gradient",
    direction: str | None = None,
    band: tuple[float, float] = PAPER_BAND,
) -> OptimumResult:
    """The optimal eps of every image (rules in the module docstring).

    ``per_image``: long table ``image_id, model, method, metric, value``;
    ``eps_of``: model name -> training eps (paper units) of the models that compete
    (other models, e.g. ``control`` or ``seeds_eps4``, are ignored).
    """
    direction = metric_direction(metric, direction)
    lo, hi = float(band[0]), float(band[1])
    d = per_image[per_image["model"].isin(list(eps_of))]
    available = sorted(set(d["method"]))
    if method not in available:
        raise DataError(f"no per-image values for method {method!r}; the sweep has: {', '.join(available) or 'none'}")
    d = d[d["method"] == method]
    metrics = sorted(set(d["metric"]))
    if metric not in metrics:
        raise DataError(
            f"no per-image values of metric {metric!r} for {method}; available: {', '.join(metrics) or 'none'}"
        )
    d = d[d["metric"] == metric].copy()
    d["eps"] = d["model"].map(lambda m: float(eps_of[m]))
    # (image, eps) -> mean over seeds
    table = d.groupby(["image_id", "eps"])["value"].mean().unstack("eps").sort_index(axis=1)
    eps_values = [float(e) for e in sorted({float(e) for e in eps_of.values()})]
    table = table.reindex(columns=eps_values)
    complete = table.notna().all(axis=1)
    n_excluded = int((~complete).sum())
    table = table[complete]
    notes = []
    if n_excluded:
        notes.append(f"{n_excluded} image(s) lack a value at some eps and are left out")
    values = table.to_numpy(dtype=np.float64)  # (N, E), columns in increasing eps
    if len(values):
        # argmax/argmin return the first hit: the smallest eps among exact ties
        best = values.argmax(axis=1) if direction == "max" else values.argmin(axis=1)
    else:
        best = np.zeros(0, dtype=np.int64)
    eps_arr = np.asarray(eps_values)
    out = pd.DataFrame(
        {
            "image_id": table.index.astype(str),
            "best_eps": eps_arr[best] if len(best) else np.zeros(0),
            "best_value": values[np.arange(len(best)), best] if len(best) else np.zeros(0),
        }
    )
    for j, e in enumerate(eps_values):
        out[f"value_eps{e:g}"] = values[:, j] if len(values) else np.zeros(0)
    counts = {e: int((out["best_eps"] == e).sum()) for e in eps_values}
    n = len(out)
    share = float(((out["best_eps"] >= lo) & (out["best_eps"] <= hi)).mean()) if n else None
    if n and not any(lo <= e <= hi for e in eps_values):
        notes.append(f"no eps of the sweep lies in [{lo:g}, {hi:g}]: the share is 0 by construction")
    return OptimumResult(metric, method, direction, (lo, hi), eps_values, out, counts, n, n_excluded, share, notes)


def write_optimum(result: OptimumResult, out_dir: str | Path, figure_stem: str | Path | None = None) -> list[Path]:
    """``out_dir/optimal_eps.csv`` (per image), ``optimal_eps.json`` (summary) and the histogram."""
    out_dir = Path(out_dir)
    paths = [out_dir / "optimal_eps.csv", out_dir / "optimal_eps.json"]
    with atomic_open(paths[0], "w", encoding="utf-8", newline="") as fh:
        result.per_image.to_csv(fh, index=False, float_format="%.8g")
    write_json(paths[1], result.summary())
    if figure_stem is not None and result.n_images:
        paths += histogram(result, figure_stem)
    return paths


def histogram(result: OptimumResult, stem: str | Path) -> list[Path]:
    """Bar chart: number of images per optimal eps, the band shaded."""
    eps = result.eps_values
    pos = np.arange(len(eps))
    fig = Figure(figsize=(1.0 + 0.7 * len(eps), 3.0))
    ax = fig.subplots()
    inside = [result.band[0] <= e <= result.band[1] for e in eps]
    ax.bar(pos, [result.counts[e] for e in eps], color=["tab:orange" if i else "tab:blue" for i in inside])
    ax.set_xticks(pos, [f"{e:g}" for e in eps])
    ax.set_xlabel("training eps (paper units)")
    ax.set_ylabel("images")
    share = "n/a" if result.share_in_band is None else f"{result.share_in_band:.0%}"
    ax.set_title(
        f"optimal eps per image ({result.method}, {result.metric}, {result.direction})\n"
        f"{share} of {result.n_images} images in [{result.band[0]:g}, {result.band[1]:g}] (orange)",
        fontsize=9,
    )
    return save_figure(fig, stem)
