"""``robsal data check``: validate a dataset and list *every* problem at once.

It lists the images like :func:`robsal.data.pipeline.prepare` does, but with a
collecting :class:`~robsal.data.index.Problems`, then decodes every image and
mask (corrupt files, masks of the wrong size) and, when a config is given,
tries the requested balanced split (too few images of a class, unknown class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from robsal.data.dicom import INSTALL_HINT, available, is_dicom, read_dicom_rgb
from robsal.data.index import DatasetIndex, Problems
from robsal.data.prepared import ARTIFACT_NAMES
from robsal.errors import DataError


@dataclass
class CheckReport:
    root: Path
    layout: str
    counts: pd.DataFrame  # index class; columns images, lesions, multi_view_lesions, without_mask
    artifact_counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts about the source (e.g. MedMNIST's official splits)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"dataset: {self.root} ({self.layout} layout)"]
        lines += [f"note: {n}" for n in self.notes]
        if len(self.counts):
            c = self.counts
            lines.append(
                f"images: {int(c['images'].sum())}  lesions: {int(c['lesions'].sum())} "
                f"({int(c['multi_view_lesions'].sum())} with several images)  "
                f"images without mask: {int(c['without_mask'].sum())}"
            )
            lines.append(c.rename_axis("class").to_string())
        if self.artifact_counts:
            lines.append("artifact masks: " + ", ".join(f"{k} {v}" for k, v in self.artifact_counts.items()))
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _verify_image(path: str) -> tuple[int, int]:
    """Decode ``path`` as training does (robsal.data.cache); its (width, height)."""
    from robsal.data.cache import BAD_IMAGE_FIX, _to_rgb
    from robsal.io import check_regular_file

    check_regular_file(path, "image")
    if is_dicom(path):
        rgb = read_dicom_rgb(path)  # DataError naming the file when unusable
        return rgb.shape[1], rgb.shape[0]
    try:
        with Image.open(path) as im:
            im.load()
            _to_rgb(im, path)  # the value checks of training (non-finite pixels)
            return im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); {BAD_IMAGE_FIX}") from None


def verify_files(index: DatasetIndex, problems: Problems) -> np.ndarray:
    """Decode every image and mask (masks must have their image's size) -> (N,) bool readable image."""
    from robsal.data.cache import _binary_mask
    from robsal.io import check_regular_file

    mask_cols = ["mask_path", *[f"{a}_path" for a in ARTIFACT_NAMES]]
    ok = np.ones(len(index.table), bool)
    if index.layout == "medmnist":  # arrays in one file, checked from its headers when listed
        return ok
    dcm = index.table["path"].map(is_dicom).to_numpy(dtype=bool)
    if dcm.any() and not available():
        problems.add(f"{int(dcm.sum())} .dcm image(s) under {index.root}: {INSTALL_HINT}")
        ok[dcm] = False
    for i, rec in enumerate(index.table.to_dict("records")):
        if not ok[i]:
            continue
        try:
            wh = _verify_image(rec["path"])
        except DataError as exc:
            problems.add(str(exc))
            ok[i] = False
            continue
        for col in mask_cols:
            mp = rec.get(col)
            if mp is None or pd.isna(mp):
                continue
            try:
                check_regular_file(mp, "mask")
                with Image.open(mp) as m:
                    m.load()
                    size = m.size
                    _binary_mask(m, mp)  # the values training accepts: {0, 1} or {0, 255}
            except DataError as exc:
                problems.add(str(exc))
                continue
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
                problems.add(f"{mp}: cannot read mask ({exc}); replace or delete the mask file")
                continue
            if size != wh:
                problems.add(
                    f"{mp}: mask is {size[0]}x{size[1]} but its image is {wh[0]}x{wh[1]}; "
                    "masks must have the size of their image"
                )
    return ok


def check_dataset(root: str | Path, source: str = "auto", cfg=None) -> CheckReport:  # noqa: ANN001
    """Validate ``root``; ``cfg`` (a Config) adds the class and split-balance checks."""
    from robsal.data.pipeline import check_classes, new_splits, read_dataset

    problems = Problems(collect=True)
    try:
        index = read_dataset(root, source, problems)
    except DataError as exc:  # the dataset cannot be listed at all
        return CheckReport(Path(root), source, pd.DataFrame(), problems=[*problems.items, str(exc)])
    t = index.table[verify_files(index, problems)]  # counts of readable images
    rows = {}
    for label, g in t.groupby("label", sort=True):
        views = g.groupby("lesion_id").size()
        rows[label] = {
            "images": len(g), "lesions": len(views), "multi_view_lesions": int((views > 1).sum()),
            "without_mask": int(g["mask_path"].isna().sum()),
        }
    counts = pd.DataFrame.from_dict(rows, orient="index",
                                    columns=["images", "lesions", "multi_view_lesions", "without_mask"])
    arts = {a: int(t[f"{a}_path"].notna().sum()) for a in ARTIFACT_NAMES} if index.has_artifact_masks else {}
    if cfg is not None and len(t):
        try:
            check_classes(index, cfg.data.classes)
            new_splits(cfg, index, t)
        except DataError as exc:
            problems.add(str(exc))
    return CheckReport(index.root, index.layout, counts, arts, problems.items, list(index.notes))
