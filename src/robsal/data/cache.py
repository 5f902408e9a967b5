"""Decode once, train many epochs: preprocessed uint8 arrays in memory-mapped ``.npy`` files.

Preprocessing follows Appendix A: centre crop to a square (HAM10000: the central
450x450 of 600x450), then resize to ``image_size`` with PIL's antialiased
bilinear filter (the torchvision ``Resize`` default). Masks use the same crop and
nearest-neighbour resizing, and are stored as {0, 1}.

The cache folder is named by a hash of the source files (path, size, mtime) in
row order plus the preprocessing settings, so any change to a file or setting
gives a new entry and a stale cache is never read. Layout::

    CACHE/<key>/images.npy      (N, 3, S, S) uint8
    CACHE/<key>/masks.npy       (N, S, S) uint8 lesion masks        (only if any mask exists)
    CACHE/<key>/has_mask.npy    (N,) bool
    CACHE/<key>/<artifact>.npy  (N, S, S) uint8                     (only if artifact masks exist)
    CACHE/<key>/done.json       written last: the entry is complete

Each file is written through :func:`robsal.io.atomic_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from robsal.data.dicom import is_dicom, read_dicom_rgb
from robsal.data.prepared import ARTIFACT_NAMES
from robsal.errors import DataError
from robsal.io import atomic_path, check_regular_file, reserve, write_json

CACHE_VERSION = 2  # 2: 16-bit and float images scaled by their range; {0, 1} masks


def default_cache_dir(cache_dir: str | None = None) -> Path:
    """``data.cache_dir``, else ``$ROBSAL_CACHE``, else ``~/.cache/robsal``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ROBSAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robsal"


@dataclass
class CachedArrays:
    images: np.ndarray  # (N, 3, S, S) uint8
    masks: np.ndarray | None  # (N, S, S) uint8 or None
    has_mask: np.ndarray  # (N,) bool
    artifact_masks: dict[str, np.ndarray] = field(default_factory=dict)
    key: str = ""
    hit: bool = False


def _path_or_none(v) -> str | None:  # noqa: ANN001
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v) else str(v)


def _crop_box(w: int, h: int, center_crop: bool) -> tuple[int, int, int, int] | None:
    if not center_crop or w == h:
        return None
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return (left, top, left + s, top + s)


# Pillow modes whose values are not 0..255: decoded by their real range, not clipped
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


# what to do about an image that cannot be used (the metadata row must go too, or the dataset lacks a file)
BAD_IMAGE_FIX = "replace the file, or delete it (and its row of the metadata CSV, if the dataset has one)"


def _to_rgb(im: Image.Image, path: str | Path) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB with its values scaled from the mode's real range.

    8-bit modes (L, P, RGB, RGBA, LA, CMYK, 1) go through ``convert("RGB")`` (alpha is
    dropped). 16-bit integer images (``I;16*``, and ``I`` with values within 0..65535) are
    scaled by 255/65535, so a 16-bit PNG keeps its contrast instead of clipping to white;
    32-bit integer images beyond that range and float images are scaled by their own min and
    max (float images already within [0, 1] by 255).
    """
    if im.mode not in _WIDE_MODES:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        raise DataError(f"{path}: image has no pixels or non-finite values; {BAD_IMAGE_FIX}")
    lo, hi = float(a.min()), float(a.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 65535.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        pass
    else:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    g = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(g, mode="L").convert("RGB")


def image_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of any image file, decoded as :func:`load_image` decodes it (no resizing)."""
    if is_dicom(path):
        return read_dicom_rgb(path)
    with Image.open(path) as im:
        im.load()
        return np.asarray(_to_rgb(im, path))


def mask_bool(path: str | Path) -> np.ndarray:
    """(H, W) bool of a {0, 1} or {0, 255} mask file, as :func:`load_mask` reads it (no resizing)."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(_binary_mask(im, path)) > 0


def load_image(path: str | Path, size: int, center_crop: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, size, size) uint8 and the original (width, height); DataError if unreadable.

    ``.dcm`` files are decoded by :func:`robsal.data.dicom.read_dicom_rgb` (rescale, window,
    3 channels), then cropped and resized like any other image.
    """
    check_regular_file(path, "image")
    if is_dicom(path):
        im = Image.fromarray(read_dicom_rgb(path))  # (H, W, 3) uint8 -> RGB
        orig = im.size
    else:
        try:
            with Image.open(path) as im:
                im.load()
                orig = im.size
                im = _to_rgb(im, path)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({exc}); {BAD_IMAGE_FIX}") from None
    box = _crop_box(*orig, center_crop)
    if box is not None:
        im = im.crop(box)
    im = im.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1), orig  # (H,W,3) -> (3,H,W)


def _binary_mask(im: Image.Image, path: str | Path) -> Image.Image:
    """A mask image -> mode L with values {0, 255}; masks stored as {0, 1} or {0, 255} (any mode).

    Other value sets (grey levels, JPEG noise, palette colours) are refused: guessing a
    threshold would silently change what counts as lesion.
    """
    if im.mode == "1":
        return im.convert("L")
    raw = np.asarray(im if im.mode in ("L", "P", *_WIDE_MODES) else im.convert("L"))
    values = np.unique(raw)
    found = set(values.tolist())
    if found <= {0, 1}:
        fg = raw > 0
    elif found <= {0, 255}:
        fg = raw > 127
    else:
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
        raise DataError(
            f"{path}: mask values are {{{shown}}}, not {{0, 1}} or {{0, 255}}; save the mask as a "
            "binary PNG (0 = background, 1 or 255 = lesion)"
        )
    return Image.fromarray(fg.astype(np.uint8) * 255, mode="L")


def load_mask(path: str | Path, size: int, image_size_wh: tuple[int, int], center_crop: bool = True) -> np.ndarray:
    """(size, size) uint8 {0, 1} from a {0, 1} or {0, 255} mask; the mask must have its image's size."""
    check_regular_file(path, "mask")
    try:
        with Image.open(path) as im:
            im.load()
            m = _binary_mask(im, path)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc}); replace or delete the mask file") from None
    if m.size != tuple(image_size_wh):
        raise DataError(
            f"{path}: mask is {m.size[0]}x{m.size[1]} but its image is {image_size_wh[0]}x{image_size_wh[1]}; "
            "masks must have the size of their image"
        )
    box = _crop_box(*m.size, center_crop)
    if box is not None:
        m = m.crop(box)
    m = m.resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(m) > 127).astype(np.uint8)


def cache_key(rows: pd.DataFrame, image_size: int, center_crop: bool, with_artifacts: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, image_size, bool(center_crop), bool(with_artifacts)]).encode())
    cols = ["path", "mask_path", *([f"{a}_path" for a in ARTIFACT_NAMES] if with_artifacts else [])]
    for rec in rows[cols].itertuples(index=False):
        for p in rec:
            p = _path_or_none(p)
            if p is None:
                h.update(b"-\n")
                continue
            try:
                st = os.stat(p)
            except OSError:
                raise DataError(f"{p}: file disappeared while preparing the data; check the dataset folder") from None
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def complete_folder(folder: Path, with_artifacts: bool) -> dict | None:
    """The entry's done.json when the entry is whole (every array file present), else None."""
    try:
        info = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    names = ["images", "has_mask", *(["masks"] if info.get("masks") else []),
             *(ARTIFACT_NAMES if with_artifacts else [])]
    return info if all((folder / f"{n}.npy").is_file() for n in names) else None


def open_array(folder: Path, name: str) -> np.ndarray:
    """A cached array of an entry, memory-mapped read-only."""
    return np.load(folder / f"{name}.npy", mmap_mode="r")


def load_arrays(
    rows: pd.DataFrame,
    image_size: int,
    *,
    center_crop: bool = True,
    with_artifacts: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> CachedArrays:
    """Preprocessed arrays for ``rows`` (INDEX_COLUMNS, in order), from the cache or decoded now."""
    from tqdm.auto import tqdm

    root = default_cache_dir(str(cache_dir) if cache_dir else None)
    key = cache_key(rows, image_size, center_crop, with_artifacts)
    folder = root / key
    info = complete_folder(folder, with_artifacts)
    if info is not None:
        masks = open_array(folder, "masks") if info.get("masks") else None
        arts = {a: open_array(folder, a) for a in ARTIFACT_NAMES} if with_artifacts else {}
        return CachedArrays(open_array(folder, "images"), masks, np.load(folder / "has_mask.npy"), arts, key, True)
    n, s = len(rows), image_size
    folder.mkdir(parents=True, exist_ok=True)
    any_mask = rows["mask_path"].map(_path_or_none).notna().any()
    with atomic_path(folder / "images.npy", suffix=".npy") as tmp_img:
        images = np.lib.format.open_memmap(tmp_img, mode="w+", dtype=np.uint8, shape=(n, 3, s, s))
        reserve(tmp_img)  # a full disk is an error here, not a SIGBUS while the map is written
        masks = np.zeros((n, s, s), np.uint8) if any_mask else None
        has_mask = np.zeros(n, bool)
        arts = {a: np.zeros((n, s, s), np.uint8) for a in ARTIFACT_NAMES} if with_artifacts else {}
        bar = tqdm(total=n, desc="decode", unit="img", disable=not (progress and sys.stderr.isatty()), leave=False)
        for i, rec in enumerate(rows.itertuples(index=False)):
            images[i], wh = load_image(rec.path, s, center_crop)
            mp = _path_or_none(rec.mask_path)
            if mp is not None:
                masks[i] = load_mask(mp, s, wh, center_crop)
                has_mask[i] = True
            for a in arts:
                ap = _path_or_none(getattr(rec, f"{a}_path"))
                if ap is not None:
                    arts[a][i] = load_mask(ap, s, wh, center_crop)
            bar.update()
        bar.close()
        images.flush()
        del images
    for name, arr in [("has_mask", has_mask), ("masks", masks), *arts.items()]:
        if arr is None:
            continue
        with atomic_path(folder / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, arr)
    write_json(folder / "done.json", {"version": CACHE_VERSION, "n": n, "image_size": s,
                                       "center_crop": center_crop, "masks": masks is not None,
                                       "artifacts": list(arts)})
    masks_mm = open_array(folder, "masks") if masks is not None else None
    arts_mm = {a: open_array(folder, a) for a in arts}
    return CachedArrays(open_array(folder, "images"), masks_mm, has_mask, arts_mm, key, False)
