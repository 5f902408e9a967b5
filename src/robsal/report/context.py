"""What every section of the report is built from: the collected run, where its pictures go,
how many pictures a section shows, and the lookups on run data that several sections share
(model labels, class names, the explained images, input images with their outlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from robsal.errors import DataError
from robsal.report import figures as F
from robsal.report.assets import ImageStore
from robsal.report.collect import RunContents, SaliencySet
from robsal.rundir import ModelMetrics, ModelRecord

DISPLAY_PX = 128  # inputs smaller than this are enlarged (nearest) before outlines are drawn


@dataclass
class Page:
    """A report being built: the run, the picture store, and the section limits (robsal.report.html)."""

    run: RunContents
    store: ImageStore
    examples_per_class: int
    grid_per_class: int
    failures_per_model: int
    viewer_max_images: int

    def png(self, pixels: np.ndarray, stem: str) -> str:
        """The ``src`` of a picture of ``pixels`` (H, W[, 3]) uint8."""
        return self.store.add(F.png_bytes(pixels), stem)

    def map_png(self, saliency: np.ndarray, stem: str, value_range: tuple[float, float] | None = None) -> str:
        """The ``src`` of a saliency map on the paper's scale (its own, or ``value_range``)."""
        return self.store.add(F.map_png(saliency, value_range=value_range), stem)


def metrics_of(record: ModelRecord | None) -> ModelMetrics:
    """The model's metrics (empty while it has no model.json)."""
    return record.metrics if record is not None and record.metrics is not None else ModelMetrics()


def model_label(run: RunContents, name: str) -> str:
    """'robust (eps=4)', 'standard (standard)', or the bare name when its eps is unknown."""
    info = run.models.get(name)
    eps = None
    if info and info.record and info.record.eps is not None:
        eps = info.record.eps
    elif run.config and isinstance(run.config.get("models"), list):
        for m in run.config["models"]:
            if isinstance(m, dict) and str(m.get("name")) == name:
                eps = m.get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        return f"{name} (standard)" if float(eps) == 0 else f"{name} (eps={float(eps):g})"
    return name


def class_name(run: RunContents, index: Any) -> str:
    classes = run.classes
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    return classes[i] if 0 <= i < len(classes) else str(i)


def input_rgb(run: RunContents, image_id: str, with_mask: bool = True, with_artifacts: bool = False) -> np.ndarray | None:
    """(H', W', 3) uint8 of a run image with its lesion outline (and artifact outlines), or None.

    Small images (the tiny/quick presets: 32-64 px) are enlarged by an integer factor
    (nearest neighbour, so no pixel is invented) to about DISPLAY_PX before the outlines are
    drawn: a one-pixel outline then covers a quarter of a source pixel instead of a whole one.
    """
    if run.data is None:
        return None
    try:
        row = int(run.data.rows_of([str(image_id)])[0])
    except DataError:
        return None  # an id the run's data does not hold (e.g. a map of another dataset)
    rgb = F.chw_to_rgb(run.data.images[row])  # (S, S, 3)
    k = max(1, DISPLAY_PX // rgb.shape[0])
    rgb = F.enlarge(rgb, k)  # (kS, kS, 3)
    if with_artifacts:
        for amask in run.data.artifact_masks.values():
            rgb = F.draw_outline(rgb, F.enlarge(amask[row], k), F.ARTIFACT_RGB)
    if with_mask and run.data.masks is not None and bool(run.data.has_mask[row]):
        rgb = F.draw_outline(rgb, F.enlarge(run.data.masks[row], k))
    return rgb


def saliency_images(run: RunContents) -> list[str]:
    """Image ids explained in this run, in the order of the first model's first method."""
    order: list[str] = []
    for per_method in run.saliency.values():
        for s in per_method.values():
            for iid in s.image_ids:
                if iid not in order:
                    order.append(iid)
    return order


def first_set(run: RunContents, image_id: str) -> tuple[SaliencySet, int] | None:
    """The first saliency set holding ``image_id``, and its row there."""
    for per_method in run.saliency.values():
        for s in per_method.values():
            r = s.row(image_id)
            if r is not None:
                return s, r
    return None


def target_name(run: RunContents, image_id: str) -> str:
    """The class name of an explained image's target ('?' when no set holds it)."""
    first = first_set(run, image_id)
    return class_name(run, first[0].targets[first[1]]) if first else "?"
