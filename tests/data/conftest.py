"""Fixtures of the data tests: an isolated cache and small datasets made on the fly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ROBSAL_CACHE", str(tmp_path_factory.mktemp("cache")))


def write_ham(root: Path, lesions: dict[str, tuple[str, int]], *, size=(60, 45), seed=0,
              mask_every: int = 2, header=("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")):
    """A HAM10000-layout folder: lesions {lesion_id: (dx, n_views)} -> image ids in order.

    Images go alternately into HAM10000_images_part_1 / ham10000_images_PART_2 (both
    cases); every ``mask_every``-th image gets ``<id>_Segmentation.png`` in a third folder.
    Image i is a flat colour whose red channel encodes i (useful for order checks).
    """
    rng = np.random.default_rng(seed)
    parts = [root / "HAM10000_images_part_1", root / "ham10000_images_PART_2"]
    mdir = root / "HAM10000_segmentations_lesion_tschandl"
    for p in [*parts, mdir]:
        p.mkdir(parents=True, exist_ok=True)
    rows, ids = [], []
    i = 0
    for lesion, (dx, views) in lesions.items():
        for _ in range(views):
            iid = f"ISIC_{1000000 + i:07d}"
            arr = np.zeros((size[1], size[0], 3), np.uint8)
            arr[..., 0] = (i * 7) % 256
            arr[..., 1] = rng.integers(0, 256)
            arr[..., 2] = 128
            Image.fromarray(arr).save(parts[i % 2] / f"{iid}.jpg", quality=95)
            if i % mask_every == 0:
                m = np.zeros((size[1], size[0]), np.uint8)
                m[size[1] // 4: 3 * size[1] // 4, size[0] // 3: 2 * size[0] // 3] = 255
                Image.fromarray(m).save(mdir / f"{iid}_Segmentation.png")
            rows.append([lesion, iid, dx, "histo", "50.0", "male", "back"])
            ids.append(iid)
            i += 1
    with open(root / "HAM10000_metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(r[: len(header)])
    return ids


def lesion_table(per_class: dict[str, list[int]]) -> dict[str, tuple[str, int]]:
    """{class: [views of lesion 1, views of lesion 2, ...]} -> write_ham's lesions mapping."""
    out = {}
    k = 0
    for dx, views in per_class.items():
        for v in views:
            out[f"HAM_{k:07d}"] = (dx, v)
            k += 1
    return out


@pytest.fixture
def ham_dir(tmp_path):
    """18 lesions / 27 images over mel, nv, bkl (several with 2-3 views), half with masks."""
    root = tmp_path / "ham"
    write_ham(root, lesion_table({"mel": [1, 2, 1, 3, 1, 1], "nv": [2, 1, 1, 1, 2, 2], "bkl": [1, 1, 3, 1, 1, 2]}))
    return root
