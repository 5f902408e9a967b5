"""MedMNIST v2 / MedMNIST+ files (``dermamnist_224.npz``, ``pathmnist.npz``, ...) read from disk.

A MedMNIST file is one ``.npz`` with six arrays::

    train_images  (N, H, W) uint8 grayscale or (N, H, W, 3) uint8 RGB     H = W = 28, 64, 128 or 224
    train_labels  (N, 1) integer class index (N,) is accepted too
    val_images, val_labels, test_images, test_labels                   the same

robsal never downloads it: point ``--data`` at the file. The set is named by the
file name (``dermamnist_224.npz`` and ``dermamnist.npz`` -> ``dermamnist``) or by
``data.source: medmnist:<set>``; its class names come from :data:`CLASSES` below (the
order of the ``medmnist`` package's ``INFO[<set>]["label"]``; DermaMNIST's are the
HAM10000 ``dx`` codes, so ``data.classes: [mel, nv, bkl]`` picks the paper's subset).
Multi-label (ChestMNIST) and 3D sets are refused.

Each image is its own lesion (MedMNIST has no lesion ids) and has no mask. Image ids
are ``<official split>_<row>`` (``train_000042`` is row 42 of ``train_images``); the
file's official train/val/test membership is kept (:func:`robsal.data.splits.
make_official_splits`). Arrays are read with ``allow_pickle=False``; the shapes and
dtypes are checked from the ``.npy`` headers before any image array is decompressed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from robsal.data.index import INDEX_COLUMNS, DatasetIndex
from robsal.errors import DataError

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
MAX_NPZ_BYTES = 64 << 30  # the largest MedMNIST+ file (tissuemnist_224) is ~10 GB compressed

# Class names per 2D multi-class set, in label order. Source: the medmnist package's
# INFO[<set>]["label"] (medmnist/info.py, v2/v3); long names shortened to lower-case
# identifiers; DermaMNIST's are HAM10000's dx codes (akiec, bcc, bkl, df, mel, nv, vasc =
# labels 0..6), OCTMNIST's the source dataset's folder names.
_ORGAN = ("bladder", "femur_left", "femur_right", "heart", "kidney_left", "kidney_right", "liver",
          "lung_left", "lung_right", "pancreas", "spleen")
CLASSES: dict[str, tuple[str, ...]] = {
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle",
                  "normal_colon_mucosa", "cancer_associated_stroma", "colorectal_adenocarcinoma_epithelium"),
    "octmnist": ("cnv", "dme", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("grade_0", "grade_1", "grade_2", "grade_3", "grade_4"),
    "breastmnist": ("malignant", "normal_benign"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature_granulocytes", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"),
    "tissuemnist": ("collecting_duct_connecting_tubule", "distal_convoluted_tubule",
                    "glomerular_endothelial_cells", "interstitial_endothelial_cells", "leukocytes",
                    "podocytes", "proximal_tubule_segments", "thick_ascending_limb"),
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}
REFUSED = {
    "chestmnist": "a multi-label set (14 findings per image); robsal trains one class per image",
    **{s: "a 3D set (volumes); robsal reads 2D images" for s in (
        "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d")},
}


def is_medmnist_source(source: str) -> bool:
    return source == "medmnist" or source.startswith("medmnist:")


def looks_like_npz(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def set_name(path: str | Path, source: str = "medmnist") -> str:
    """The MedMNIST set of ``path``: ``medmnist:<set>`` if given, else from the file name."""
    path = Path(path)
    if source.startswith("medmnist:"):
        name = source.split(":", 1)[1].strip().lower()
        how = f"data.source={source}"
    else:
        name = re.sub(r"_\d+$", "", path.stem.lower())  # dermamnist_224 -> dermamnist
        how = f"the file name {path.name}"
    if name in REFUSED:
        raise DataError(f"{path}: {name} is {REFUSED[name]}; use a 2D multi-class set ({', '.join(CLASSES)})")
    if name not in CLASSES:
        raise DataError(
            f"{path}: {how} names no MedMNIST set robsal knows ({', '.join(CLASSES)}); name the file "
            "<set>_<size>.npz (e.g. dermamnist_64.npz) or pass --set data.source=medmnist:<set>"
        )
    return name


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every array in the .npz, read from the .npy headers only."""
    from numpy.lib import format as npformat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"MedMNIST file {path} cannot be read ({exc.strerror}); pass an existing .npz file") from None
    if not path.is_file():
        raise DataError(f"MedMNIST file {path} is not a regular file; pass a .npz file")
    if st.st_size > MAX_NPZ_BYTES:
        raise DataError(f"{path} is {st.st_size} bytes, more than a MedMNIST file has ({MAX_NPZ_BYTES}); check the file")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    version = npformat.read_magic(fh)
                    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                    shape, _, dtype = read(fh)
                out[name[: -len(".npy")]] = (tuple(int(v) for v in shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a NumPy .npz archive ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "pass a MedMNIST file such as dermamnist_64.npz"
        ) from None
    return out


def _check_headers(path: Path, heads: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    missing = [k for k in KEYS if k not in heads]
    if missing:
        raise DataError(
            f"{path}: key {missing[0]!r} is missing (found: {', '.join(sorted(heads)) or 'none'}); a MedMNIST file has "
            f"{', '.join(KEYS)}"
        )
    for key in KEYS:
        shape, dtype = heads[key]
        if dtype.hasobject:
            raise DataError(
                f"{path}: key {key!r} holds Python objects (a pickled array), which robsal never loads; "
                "save it as a numeric array (np.savez with uint8 images and integer labels)"
            )
    for split in SPLITS:
        ikey, lkey = f"{split}_images", f"{split}_labels"
        shape, dtype = heads[ikey]
        if len(shape) == 4 and shape[-1] not in (1, 3):
            raise DataError(
                f"{path}: key {ikey!r} has shape {shape}, a 3D volume (N, D, H, W); robsal reads 2D MedMNIST sets: "
                "(N, H, W) grayscale or (N, H, W, 3) RGB"
            )
        if len(shape) not in (3, 4) or shape[0] == 0:
            raise DataError(
                f"{path}: key {ikey!r} has shape {shape}; MedMNIST images are (N, H, W) grayscale or (N, H, W, 3) RGB "
                "with N >= 1"
            )
        if dtype != np.uint8:
            raise DataError(f"{path}: key {ikey!r} is {dtype}, not uint8; save the images as uint8 (0..255)")
        lshape, ldtype = heads[lkey]
        if len(lshape) == 2 and lshape[1] > 1:
            raise DataError(
                f"{path}: key {lkey!r} has {lshape[1]} columns, a multi-label set; robsal needs one class per image "
                "(labels of shape (N, 1))"
            )
        if len(lshape) not in (1, 2) or lshape[0] != shape[0]:
            raise DataError(
                f"{path}: key {lkey!r} has shape {lshape} but {ikey!r} holds {shape[0]} images; "
                "labels must be (N, 1), one per image"
            )
        if ldtype.kind not in "iu":
            raise DataError(f"{path}: key {lkey!r} is {ldtype}, not integers; labels are class indices 0..K-1")


def _load(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except ValueError as exc:  # pickled object arrays, corrupt members
        raise DataError(f"{path}: cannot read key {key!r} ({str(exc).splitlines()[0]}); re-save the file") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read key {key!r} ({exc}); replace the file") from None


def read_medmnist(path: str | Path, source: str = "medmnist") -> DatasetIndex:
    """List a MedMNIST ``.npz``: one row per image, ``official_split`` and ``row`` columns added."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"MedMNIST file {path} does not exist; pass an existing .npz file with --data")
    name = set_name(path, source)
    classes = CLASSES[name]
    heads = _headers(path)
    _check_headers(path, heads)
    parts = []
    for split in SPLITS:
        lkey = f"{split}_labels"
        labels = _load(path, lkey).reshape(-1).astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path}: key {lkey!r} has label {labels[i]} at row {i}, but {name} has {len(classes)} classes "
                f"(0..{len(classes) - 1}); use the {name} file or fix the labels"
            )
        n = len(labels)
        ids = [f"{split}_{i:06d}" for i in range(n)]
        parts.append(pd.DataFrame({
            "image_id": ids, "lesion_id": ids, "label": [classes[k] for k in labels], "path": str(path),
            "mask_path": None, "official_split": split, "row": np.arange(n, dtype=np.int64),
        }))
    table = pd.concat(parts, ignore_index=True)
    for col in INDEX_COLUMNS:
        if col not in table.columns:
            table[col] = None
    shape = heads["train_images"][0]
    kind = "RGB" if len(shape) == 4 and shape[-1] == 3 else "grayscale"
    notes = [
        f"MedMNIST set {name} ({kind}, {shape[1]}x{shape[2]} px); official splits: "
        + ", ".join(f"{s} {int((table['official_split'] == s).sum())}" for s in SPLITS),
        "no lesion ids (each image is its own lesion) and no masks: the localisation metrics will be skipped",
    ]
    return DatasetIndex(path, "medmnist", table[[*INDEX_COLUMNS, "official_split", "row"]], notes=notes)


def _to_square_rgb(img: np.ndarray, size: int, center_crop: bool) -> np.ndarray:
    """(H, W) or (H, W, 1|3) uint8 -> (3, size, size) uint8, as cache.load_image does for a file."""
    from robsal.data.cache import _crop_box

    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    im = Image.fromarray(np.ascontiguousarray(img)).convert("RGB")  # grayscale -> 3 equal channels
    box = _crop_box(*im.size, center_crop)
    if box is not None:
        im = im.crop(box)
    im = im.resize((size, size), Image.Resampling.BILINEAR)  # no-op copy at the file's own size
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H,W,3) -> (3,H,W)


def load_arrays(rows: pd.DataFrame, image_size: int, *, center_crop: bool = True,
                cache_dir: str | Path | None = None, progress: bool = True):  # -> cache.CachedArrays
    """Preprocessed arrays of ``rows`` (index rows of one MedMNIST file, in order), cached like files.

    The cache entry is keyed by the file's (path, size, mtime), the image ids in order and
    the preprocessing settings; it holds ``images.npy`` and ``has_mask.npy`` (all False).
    """
    from tqdm.auto import tqdm

    from robsal.data.cache import CACHE_VERSION, CachedArrays, complete_folder, default_cache_dir, open_array
    from robsal.io import atomic_path, write_json

    path = Path(str(rows["path"].iloc[0]))
    st = os.stat(path)
    h = hashlib.sha256()
    h.update(json.dumps(["medmnist", CACHE_VERSION, os.path.abspath(path), st.st_size, st.st_mtime_ns,
                         image_size, bool(center_crop)]).encode())
    h.update("\n".join(rows["image_id"].astype(str)).encode())
    key = h.hexdigest()[:24]
    folder = default_cache_dir(str(cache_dir) if cache_dir else None) / key
    n = len(rows)
    if complete_folder(folder, False) is not None:
        return CachedArrays(open_array(folder, "images"), None, np.load(folder / "has_mask.npy"), {}, key, True)
    images = np.zeros((n, 3, image_size, image_size), np.uint8)
    bar = tqdm(total=n, desc="decode", unit="img", disable=not (progress and sys.stderr.isatty()), leave=False)
    for split in SPLITS:
        sel = np.flatnonzero((rows["official_split"] == split).to_numpy())
        if not sel.size:
            continue
        arr = _load(path, f"{split}_images")  # the whole split, decompressed once
        for i, r in zip(sel, rows["row"].to_numpy()[sel]):
            images[i] = _to_square_rgb(arr[int(r)], image_size, center_crop)
            bar.update()
        del arr
    bar.close()
    has_mask = np.zeros(n, bool)
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in (("images", images), ("has_mask", has_mask)):
        with atomic_path(folder / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, a)
    write_json(folder / "done.json", {"version": CACHE_VERSION, "n": n, "image_size": image_size,
                                       "center_crop": center_crop, "masks": False, "artifacts": [],
                                       "source": "medmnist"})
    return CachedArrays(open_array(folder, "images"), None, has_mask, {}, key, False)
