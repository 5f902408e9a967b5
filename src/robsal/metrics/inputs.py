"""What the metrics stage reads: the saved saliency maps and the arrays of the images they explain.

:func:`load_saliency` reads ``RUN/saliency/<model>/<method>.npz`` and checks that every file
explains the same images in the same order; :func:`explained_images` takes those images'
arrays (pixels, lesion and artifact masks, class counts) from the run's data.
:class:`EvaluationInputs` holds both with the models' records, the stage's typed input
(built by :func:`robsal.metrics.run.load_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robsal.config import Config
from robsal.data import PreparedData
from robsal.errors import DataError, UserError
from robsal.rundir import read_saliency

Saliency = dict[str, dict[str, dict[str, np.ndarray]]]
"""model -> method -> the arrays of its ``.npz`` (``maps`` (N, H, W), ``image_ids``, ``targets``)."""


@dataclass
class ExplainedImages:
    """The N explained images (the order of every ``.npz``) and what the metrics need of them."""

    ids: np.ndarray  # (N,) str
    x: torch.Tensor  # (N, 3, H, W) in [0, 1], on the CPU
    masks: np.ndarray | None  # (N, H, W) bool lesion masks; None: the data has none
    has_mask: np.ndarray  # (N,) bool
    artifacts: dict[str, np.ndarray]  # artifact name -> (N, H, W) bool
    classes: list[str]
    explained: dict[str, int]  # class -> number of explained images

    @property
    def pixels(self) -> np.ndarray:
        """(N, 3, H, W) float32 in [0, 1] (a view of ``x``)."""
        return self.x.numpy()

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EvaluationInputs:
    """Everything the metrics stage computes from, read once from the run directory."""

    run_dir: Path
    cfg: Config
    saliency: Saliency
    images: ExplainedImages
    models: dict[str, dict[str, Any]]  # name -> robsal.metrics.run.model_info
    standard: str | None  # the eps = 0 model the robust ones are compared with
    notes: list[str]  # what the inputs lack, for summary.json


def load_saliency(run_dir: Path, n_classes: int | None = None) -> Saliency:
    """{model: {method: npz arrays}} from RUN/saliency (each file checked by
    :func:`robsal.rundir.read_saliency`, targets within ``n_classes``), checked to share one image list."""
    root = run_dir / "saliency"
    files = sorted(root.glob("*/*.npz"))
    if not files:
        raise UserError(f"no saliency maps under {root}; run `robsal explain --run {run_dir}` first")
    out: Saliency = {}
    ref_ids, ref_file = None, None
    for f in files:
        arrays = read_saliency(f, n_classes)
        ids = arrays["image_ids"]
        if ref_ids is None:
            ref_ids, ref_file = ids, f
        elif not np.array_equal(ids, ref_ids):
            raise DataError(
                f"{f} explains other images (or another order) than {ref_file}; "
                "re-run `robsal explain` so every model and method share one image list"
            )
        out.setdefault(f.parent.name, {})[f.stem] = arrays
    return out


def explained_images(saliency: Saliency, data: PreparedData) -> ExplainedImages:
    """The images the maps explain, from ``data``; a DataError if a map's size is not theirs."""
    first = next(iter(next(iter(saliency.values())).values()))
    ids = first["image_ids"].astype(str)
    rows = data.rows_of(ids)
    x_cpu, _ = data.batch(rows, "cpu")  # (N, 3, S, S) in [0, 1]
    n, _, h, w = x_cpu.shape
    for model, methods in saliency.items():
        for method, arr in methods.items():
            if arr["maps"].shape[1:] != (h, w):
                raise DataError(
                    f"saliency/{model}/{method}.npz has {arr['maps'].shape[1:]} maps but the images are "
                    f"{h}x{w}; re-run `robsal explain` on this run"
                )
    masks = data.masks[rows].astype(bool) if data.masks is not None else None
    has_mask = np.asarray(data.has_mask)[rows].astype(bool) if masks is not None else np.zeros(n, bool)
    classes = list(data.classes)
    counts = np.bincount(data.labels[rows], minlength=len(classes))
    return ExplainedImages(
        ids=ids,
        x=x_cpu,
        masks=masks,
        has_mask=has_mask,
        artifacts={k: np.asarray(v)[rows].astype(bool) for k, v in (data.artifact_masks or {}).items()},
        classes=classes,
        explained={c: int(k) for c, k in zip(classes, counts)},
    )
