"""A PNG grid of example images of a HAM10000-layout dataset, with mask outlines.

Rows are classes, columns examples; the lesion mask is outlined in green and
ruler, vignette and bubble masks in yellow (hairs are only named in the
title: an outline would hide them). Used for
``docs/synthetic_grid.png`` (``robsal data synth ... --preview FILE.png``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from robsal.data.cache import image_rgb, mask_bool
from robsal.data.ham10000 import read_ham10000
from robsal.data.prepared import ARTIFACT_NAMES
from robsal.io import atomic_path


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def save_preview(root: str | Path, out: str | Path, per_class: int = 6, classes: list[str] | None = None) -> Path:
    """Write the grid to ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = read_ham10000(root).table
    classes = classes or sorted(table["label"].unique())
    fig, axes = plt.subplots(len(classes), per_class, figsize=(2.2 * per_class, 1.9 * len(classes)), squeeze=False)
    for r, label in enumerate(classes):
        rows = table[table["label"] == label].head(per_class).to_dict("records")
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(rows):
                continue
            rec = rows[c]
            img = image_rgb(rec["path"]).copy()
            tags = []
            for name in ARTIFACT_NAMES:
                p = rec.get(f"{name}_path")
                if isinstance(p, str):
                    if name != "hair":  # a hair is thinner than its outline: leave it visible
                        img[_outline(mask_bool(p))] = (255, 220, 0)
                    tags.append(name)
            if isinstance(rec["mask_path"], str):
                img[_outline(mask_bool(rec["mask_path"]))] = (0, 255, 0)
            ax.imshow(img)
            ax.set_title(f"{label} {rec['image_id'][-4:]}" + (f"\n{', '.join(tags)}" if tags else "\n"), fontsize=7)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out
