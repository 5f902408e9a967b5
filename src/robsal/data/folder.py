"""Generic image-folder datasets (X-ray, CT slices, histology, ...).

Layout::

    root/<class>/<name>.png|jpg|jpeg|dcm        one sub-folder per class
    <root>_masks/<class>/<name>.png             optional lesion/object masks (sibling folder;
                                                <name>_segmentation.png is accepted too)

``.dcm`` files are single-frame DICOM images, decoded with pydicom (the ``dicom``
extra) as :mod:`robsal.data.dicom` describes; their masks are PNGs like any other.

The image id is the file name without extension and must be unique across
classes. There is no lesion grouping information, so every image is its own
lesion (``lesion_id = image_id``): splitting then equals ``split_by=image``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robsal.data.dicom import DICOM_EXTS
from robsal.data.index import IMAGE_EXTS, INDEX_COLUMNS, DatasetIndex, Problems, check_root, inside
from robsal.errors import DataError

FOLDER_EXTS = (*IMAGE_EXTS, *DICOM_EXTS)


def masks_root(root: Path) -> Path:
    return root.parent / f"{root.name}_masks"


def read_folder(root: str | Path, problems: Problems | None = None) -> DatasetIndex:
    """List ``root/<class>/*``; bad entries go to ``problems`` (default: raise)."""
    problems = problems if problems is not None else Problems()
    root = check_root(root)
    mroot = masks_root(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root}: no class sub-folders; the folder layout is root/<class>/<image>.png "
            "(or give a HAM10000 metadata CSV)"
        )
    if {p.name.lower() for p in class_dirs} <= {"images", "masks"}:
        raise DataError(
            f"{root}: has {' and '.join(p.name + '/' for p in class_dirs)} but no metadata CSV, so it is "
            "neither HAM10000 (put HAM10000_metadata.csv here) nor class folders (root/<class>/<image>)"
        )
    by_label: dict[str, list[str]] = {}
    for cdir in class_dirs:
        by_label.setdefault(cdir.name.lower(), []).append(cdir.name)
    for label, names in by_label.items():
        if len(names) > 1:  # class names are case-insensitive: 'A/' and 'a/' would silently merge
            raise DataError(
                f"{root}: class folders {' and '.join(repr(n + '/') for n in names)} differ only in case "
                f"and would both be class {label!r}; merge or rename them"
            )
    rows = []
    seen: dict[str, Path] = {}
    for cdir in class_dirs:
        label = cdir.name.lower()
        for path in sorted(cdir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in FOLDER_EXTS or not path.is_file():
                continue
            if not inside(root, path):
                problems.add(f"{path} links outside the dataset folder {root}; copy the file in instead")
                continue
            iid = path.stem
            if iid in seen:
                problems.add(f"{path}: image name {iid} is also used by {seen[iid]}; rename one (ids must be unique)")
                continue
            seen[iid] = path
            mask = None
            for cand in (mroot / cdir.name / f"{iid}.png", mroot / cdir.name / f"{iid}_segmentation.png"):
                if cand.is_file():
                    mask = cand
                    break
            if mask is not None and not inside(mroot, mask):
                problems.add(f"{mask}: mask links outside the mask folder {mroot}; copy the file in instead")
                mask = None
            rows.append({"image_id": iid, "lesion_id": iid, "label": label, "path": str(path),
                         "mask_path": str(mask) if mask else None})
    table = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if table.empty:
        problems.add(f"{root}: the class folders hold no .png/.jpg/.dcm images")
    return DatasetIndex(root, "folder", table)
