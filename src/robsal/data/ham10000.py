"""HAM10000 as published (paper Section 2, Appendix A), and the synthetic set in its layout.

Expected on disk (names case-insensitive, any folder depth under ``root``)::

    root/HAM10000_metadata[.csv]        lesion_id,image_id,dx[,dx_type,age,sex,localization,...]
    root/<any folder>/ISIC_0024306.jpg  e.g. HAM10000_images_part_1/ and _part_2/
    root/<any folder>/ISIC_0024306_segmentation.png   optional lesion mask (or _Segmentation)
    root/<any folder>/ISIC_0024306_<hair|ruler|vignette|bubble>.png  optional artifact masks

The metadata file is any CSV (or the extension-less ``HAM10000_metadata``) in
``root`` whose header has ``image_id`` and ``dx``. Images are found by name, so
the part_1/part_2 split, the ISIC 2018 task-1 mask folder or our ``masks/``
folder all work. An ``image_id`` must be a plain file name: ids with path
separators or ``..`` are refused, and files whose real path (links resolved)
leaves ``root`` are refused.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pandas as pd

from robsal.data.index import IMAGE_EXTS, INDEX_COLUMNS, DatasetIndex, Problems, check_root, inside
from robsal.data.prepared import ARTIFACT_NAMES
from robsal.errors import DataError
from robsal.io import check_regular_file

REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MASK_SUFFIXES = {"segmentation": "mask_path", **{a: f"{a}_path" for a in ARTIFACT_NAMES}}


def find_metadata(root: Path, strict: bool = True) -> Path | None:
    """The metadata CSV in ``root`` (header with image_id and dx), or None.

    With ``strict=False`` a file named ``HAM10000_metadata*`` (or the only CSV)
    is returned even when columns are missing, so the caller can say which.
    """
    candidates = sorted(
        p for p in root.iterdir()
        if p.is_file() and (p.suffix.lower() == ".csv" or p.name.lower() == "ham10000_metadata")
    )
    for p in candidates:
        try:
            with open(p, newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError):
            continue
        cols = {h.strip().lower() for h in header}
        if {"image_id", "dx"} <= cols:
            return p
    if not strict:
        named = [p for p in candidates if p.name.lower().startswith("ham10000_metadata")]
        if named or len(candidates) == 1:
            return (named or candidates)[0]
    return None


def looks_like_metadata(root: Path) -> Path | None:
    """A CSV in ``root`` that is meant as HAM10000 metadata even if it does not qualify, or None.

    Its name starts with ``HAM10000_metadata``, or its first line (read whatever its encoding
    or separator) names ``image_id`` or ``dx``: then the layout is HAM10000 and the reader says
    what is wrong with the file, instead of the dataset being taken for class folders.
    """
    for p in sorted(q for q in root.iterdir() if q.is_file() and q.suffix.lower() == ".csv"):
        if p.name.lower().startswith("ham10000_metadata"):
            return p
        try:
            with open(p, "rb") as fh:
                first = fh.readline(65536).decode("latin-1").lower()
        except OSError:
            continue
        cols = {c.strip().strip('"') for c in first.replace(";", ",").replace("\t", ",").split(",")}
        if {"image_id", "dx"} & cols:
            return p
    return None


def scan_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, dict[str, Path]]]:
    """Walk ``root``: image id -> image files, and mask kind -> {image id: mask file}.

    Mask files (``<id>_segmentation.png``, ``<id>_hair.png``, ...) are not images.
    Matching is case-insensitive on the suffix and extension; ids keep their case.
    """
    images: dict[str, list[Path]] = {}
    masks: dict[str, dict[str, Path]] = {k: {} for k in _MASK_SUFFIXES}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS:
                continue
            path = Path(dirpath) / name
            base, _, kind = stem.rpartition("_")
            if base and ext.lower() == ".png" and kind.lower() in _MASK_SUFFIXES:
                masks[kind.lower()][base] = path
                continue
            images.setdefault(stem, []).append(path)
    return images, masks


MAX_METADATA_BYTES = 512 << 20  # HAM10000's is 0.6 MB; a bigger file is not metadata


def read_metadata(path: Path, problems: Problems) -> pd.DataFrame | None:
    """The metadata table with lower-case column names; None when unusable."""
    try:
        check_regular_file(path, "metadata CSV", MAX_METADATA_BYTES)
    except DataError as exc:
        problems.add(str(exc))
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError:
        problems.add(f"{path}: the metadata CSV is not UTF-8 text (e.g. Latin-1); save it as UTF-8 and re-run")
        return None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problems.add(f"{path}: cannot read the metadata CSV ({str(exc).splitlines()[0]}); fix or replace the file")
        return None
    names = [str(c).strip().lower() for c in table.columns]
    dup = sorted({c for c in names if names.count(c) > 1 and c in REQUIRED_COLUMNS})
    if dup:
        problems.add(
            f"{path}: the metadata has the column {dup[0]!r} more than once (names ignore case and spaces); "
            "keep one"
        )
        return None
    table.columns = names
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing and len(table.columns) == 1 and any(sep in table.columns[0] for sep in (";", "\t")):
        sep = "';'" if ";" in table.columns[0] else "a tab"
        problems.add(f"{path}: the metadata CSV uses {sep!s} as separator; save it with commas (,) and re-run")
        return None
    if missing:
        problems.add(
            f"{path}: metadata is missing column(s) {', '.join(missing)}; HAM10000 metadata needs "
            f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(table.columns)})"
        )
        return None
    return table


def read_ham10000(root: str | Path, problems: Problems | None = None, metadata: str | Path | None = None) -> DatasetIndex:
    """List a HAM10000-layout dataset; every bad row goes to ``problems`` (default: raise)."""
    problems = problems if problems is not None else Problems()
    root = check_root(root)
    meta_path = Path(metadata) if metadata else find_metadata(root, strict=False)
    if meta_path is None:
        raise DataError(
            f"{root}: no metadata CSV with image_id and dx columns; put HAM10000_metadata.csv in this folder"
        )
    table = read_metadata(meta_path, problems)
    if table is None:
        return DatasetIndex(root, "ham10000", pd.DataFrame(columns=INDEX_COLUMNS))
    images, masks = scan_files(root)
    rows = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table[list(REQUIRED_COLUMNS)].itertuples(index=False)):
        line = i + 2  # 1-based, after the header
        where = f"{meta_path.name} row {line}"
        lesion_id, image_id, dx = (str(v).strip() for v in rec)
        if not _SAFE_ID.match(image_id) or ".." in image_id:
            problems.add(
                f"{where}: image_id {image_id!r} points outside the dataset folder or is not a plain "
                "file name; image ids must be names like ISIC_0024306"
            )
            continue
        if not dx:
            problems.add(f"{where}: image {image_id} has an empty dx (class); fill it in or remove the row")
            continue
        if image_id in seen:
            problems.add(f"{where}: image_id {image_id} repeats row {seen[image_id]}; remove the duplicate row")
            continue
        seen[image_id] = line
        files = images.get(image_id, [])
        if not files:
            problems.add(
                f"{where}: no image file {image_id}.jpg/.png under {root}; add the image or remove the row"
            )
            continue
        if len(files) > 1:
            problems.add(
                f"{where}: image {image_id} exists twice ({files[0]}, {files[1]}); keep one copy"
            )
            continue
        path = files[0]
        if not inside(root, path):
            problems.add(f"{where}: {path} links outside the dataset folder {root}; copy the file in instead")
            continue
        row = {"image_id": image_id, "lesion_id": lesion_id or image_id, "label": dx.lower(), "path": str(path)}
        for kind, col in _MASK_SUFFIXES.items():
            m = masks[kind].get(image_id)
            if m is not None and not inside(root, m):
                problems.add(f"{m}: mask links outside the dataset folder {root}; copy the file in instead")
                m = None
            row[col] = str(m) if m is not None else None
        rows.append(row)
    out = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    has_art = any(len(masks[a]) for a in ARTIFACT_NAMES)
    return DatasetIndex(root, "ham10000", out, has_artifact_masks=has_art)
