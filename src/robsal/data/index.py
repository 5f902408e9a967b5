"""A dataset on disk, listed: one row per image with its label, lesion and file paths.

Both loaders (:mod:`robsal.data.ham10000`, :mod:`robsal.data.folder`) return a
:class:`DatasetIndex`; splitting, caching and checking work on it and never look
at the layout again.

:class:`Problems` lets the same loader code either stop at the first bad input
(``prepare``: raise :class:`~robsal.errors.DataError`) or collect every problem
(``robsal data check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robsal.data.prepared import ARTIFACT_NAMES
from robsal.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# columns of DatasetIndex.table; paths are absolute strings, missing masks are None
INDEX_COLUMNS = ["image_id", "lesion_id", "label", "path", "mask_path", *[f"{a}_path" for a in ARTIFACT_NAMES]]


class Problems:
    """Collects bad-input messages (``collect=True``) or raises the first one."""

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if not self.collect:
            raise DataError(message)
        self.items.append(message)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class DatasetIndex:
    """Images of a dataset. ``table`` has :data:`INDEX_COLUMNS` (one row per usable image)."""

    root: Path
    layout: str  # "ham10000" | "folder" | "medmnist"
    table: pd.DataFrame
    has_artifact_masks: bool = False  # any artifact mask file found (missing ones = no artifact)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted(self.table["label"].unique().tolist())


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (links resolved) lies inside ``root``."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; pass an existing folder with --data")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder; pass the folder that holds the images (or a MedMNIST .npz file)")
    return root
