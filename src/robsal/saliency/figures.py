"""Comparison figures of saliency maps (paper Figures 1 and 5-8), PNG and PDF.

* :func:`method_grid`: one method; rows are images, columns are the image then each
  model (standard, robust eps ...) -- Figures 1 and 5.
* :func:`image_grid`: one image; rows are methods, columns are models -- Figures 6-8.

Maps are shown as single-colour heat maps in [0, 1] (``visualize.normalize_map``),
optionally over the image, with one colour bar per figure. ``scale='row'`` puts the
maps of a row on one common scale (the 99th percentile of the row) instead of each
map on its own (the paper). Files are written atomically.

Matplotlib is used through its object API (``Figure`` + Agg canvas), never through
``pyplot``: importing or calling this module leaves the caller's backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from robsal.io import atomic_path
from robsal.saliency.visualize import image_hwc, normalize_map, overlay

CMAP = "inferno"


def _figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure on its own Agg canvas (no pyplot state) and its (rows, cols) axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf atomically."""
    stem = Path(stem)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_name(stem.name + f".{ext}")
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def _normalise_row(maps: Sequence[np.ndarray], scale: str, mode: str) -> list[np.ndarray]:
    if scale == "row":
        return list(normalize_map(np.stack(maps), mode, joint=True))
    if scale != "map":
        raise ValueError(f"scale must be 'map' or 'row', got {scale!r}")
    return [normalize_map(m, mode) for m in maps]


def _show(ax: Axes, image: np.ndarray | None, norm: np.ndarray, overlay_image: bool):
    if overlay_image and image is not None:
        return ax.imshow(overlay(image, norm, cmap=CMAP), vmin=0, vmax=1)
    return ax.imshow(norm, cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")


def _finish(fig: Figure, axes: np.ndarray, mappable, title: str) -> None:
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes.ravel()), shrink=0.6, label="saliency (normalised)")
    fig.suptitle(title)


def method_grid(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    stem: str | Path,
    *,
    title: str = "",
    row_labels: Sequence[str] | None = None,
    normalisation: str = "paper",
    scale: str = "map",
    overlay_image: bool = False,
) -> list[Path]:
    """Figure 1/5 style grid for one method.

    ``images``: (N, 3, H, W) uint8 or float in [0, 1]; ``maps``: model name -> (N, H, W)
    raw non-negative maps (as saved in ``RUN/saliency``). Columns: image, then models in
    the mapping's order. Returns the PNG and PDF paths.
    """
    names = list(maps)
    rows = [(image_hwc(images[i]), row_labels[i] if row_labels is not None else None, [maps[k][i] for k in names])
            for i in range(len(images))]
    return _grid(rows, names, stem, title, normalisation, scale, overlay_image)


def image_grid(
    image: np.ndarray,
    maps: Mapping[str, Mapping[str, np.ndarray]],
    stem: str | Path,
    *,
    title: str = "",
    normalisation: str = "paper",
    scale: str = "map",
    overlay_image: bool = False,
) -> list[Path]:
    """Figures 6-8 style grid for one image: rows = methods, columns = image + models.

    ``image``: (3, H, W); ``maps``: method -> model -> (H, W) raw non-negative map.
    """
    methods = list(maps)
    models = list(next(iter(maps.values()))) if methods else []
    img = image_hwc(image)
    rows = [(img, method, [maps[method][m] for m in models]) for method in methods]
    return _grid(rows, models, stem, title, normalisation, scale, overlay_image)


def _grid(
    rows: Sequence[tuple[np.ndarray, str | None, list[np.ndarray]]],
    columns: Sequence[str],
    stem: str | Path,
    title: str,
    normalisation: str,
    scale: str,
    overlay_image: bool,
) -> list[Path]:
    """One row per (image HWC, row label or None, maps in column order): the image, then each map."""
    fig, axes = _figure(len(rows), 1 + len(columns), (1.9 * (1 + len(columns)) + 0.8, 1.9 * len(rows)))
    mappable = None
    for i, (img, label, row_maps) in enumerate(rows):
        axes[i, 0].imshow(img)
        if label is not None:
            axes[i, 0].set_ylabel(label, fontsize=7)
        for j, (name, norm) in enumerate(zip(columns, _normalise_row(row_maps, scale, normalisation)), start=1):
            mappable = _show(axes[i, j], img, norm, overlay_image)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    if overlay_image:
        mappable = ScalarMappable(norm=Normalize(0, 1), cmap=CMAP)
    _finish(fig, axes, mappable, title)
    return save_figure(fig, stem)
