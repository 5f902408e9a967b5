"""The uint8 memory-mapped cache: preprocessing numbers, keys, reuse."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robsal.data.cache import cache_key, load_arrays, load_image, load_mask
from robsal.data.index import INDEX_COLUMNS
from robsal.errors import DataError


def _rows(paths, masks=None):
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(paths))], "lesion_id": "l", "label": "a",
                       "path": [str(p) for p in paths]})
    df["mask_path"] = [str(m) if m else None for m in (masks or [None] * len(paths))]
    for c in INDEX_COLUMNS:
        if c not in df:
            df[c] = None
    return df[INDEX_COLUMNS]


def test_centre_crop_then_resize_matches_closed_form(tmp_path):
    # 8x6 image: crop keeps columns 1..6 (the central 6x6); at size 6 the resize is the identity
    arr = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out, wh = load_image(tmp_path / "a.png", 6)
    assert wh == (8, 6)
    np.testing.assert_array_equal(out, arr[:, 1:7].transpose(2, 0, 1))
    # without the crop the whole image is resized
    out, _ = load_image(tmp_path / "a.png", 6, center_crop=False)
    assert out.shape == (3, 6, 6)
    assert not np.array_equal(out, arr[:, 1:7].transpose(2, 0, 1))


def test_resize_is_antialiased_and_masks_use_nearest(tmp_path):
    # a 1-px checkerboard averages to grey when shrunk with an antialiasing filter
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(tmp_path / "b.png")
    out, _ = load_image(tmp_path / "b.png", 16)
    assert abs(out.astype(float).mean() - 127.5) < 2 and out.std() < 3
    m = load_mask(tmp_path / "b.png", 16, (64, 64))
    assert set(np.unique(m)) <= {0, 1} and m.dtype == np.uint8
    # a 0/255 mask with an off-centre block keeps its block (nearest) after the crop
    mask = np.zeros((30, 40), np.uint8)
    mask[:, 5:20] = 255  # cropped square covers x 5..34 -> block is the left half
    Image.fromarray(mask).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 10, (40, 30))
    np.testing.assert_array_equal(m, np.repeat([[1] * 5 + [0] * 5], 10, axis=0))


def test_cache_is_reused_and_keyed_by_files_and_settings(tmp_path):
    paths = []
    for k in range(3):
        Image.fromarray(np.full((12, 16, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
        paths.append(tmp_path / f"{k}.png")
    rows = _rows(paths)
    a = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    assert not a.hit and isinstance(a.images, np.memmap) and a.images.shape == (3, 3, 8, 8)
    assert a.masks is None and not a.has_mask.any()
    np.testing.assert_array_equal(a.images[:, 0, 0, 0], [0, 40, 80])
    b = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    assert b.hit and b.key == a.key
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert cache_key(rows, 16, True, False) != a.key  # another size
    assert cache_key(rows, 8, False, False) != a.key  # no crop
    assert cache_key(rows.iloc[::-1], 8, True, False) != a.key  # another order
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(paths[1])  # edit a source file
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    assert not c.hit and c.images[1, 0, 0, 0] == 200


def test_an_interrupted_entry_is_rebuilt(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "x.png")
    rows = _rows([tmp_path / "x.png"])
    a = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    (tmp_path / "c" / a.key / "done.json").unlink()  # as if the process died before the end
    (tmp_path / "c" / a.key / "images.npy").write_bytes(b"garbage")
    b = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    assert not b.hit and b.images[0, 0, 0, 0] == 9
    (tmp_path / "c" / a.key / "has_mask.npy").unlink()  # a file deleted by hand
    c = load_arrays(rows, 8, cache_dir=tmp_path / "c", progress=False)
    assert not c.hit and c.images[0, 0, 0, 0] == 9


@pytest.mark.parametrize("with_artifacts", [False, True])
def test_masks_and_artifacts_rows(tmp_path, with_artifacts):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "x_m.png")
    rows = _rows([tmp_path / "x.png", tmp_path / "x.png"], [tmp_path / "x_m.png", None])
    rows.loc[0, "hair_path"] = str(tmp_path / "x_m.png")
    a = load_arrays(rows, 4, with_artifacts=with_artifacts, cache_dir=tmp_path / "c", progress=False)
    assert a.has_mask.tolist() == [True, False]
    assert a.masks[0].all() and not a.masks[1].any()
    if with_artifacts:
        assert set(a.artifact_masks) == {"hair", "ruler", "vignette", "bubble"}
        assert a.artifact_masks["hair"][0].all() and not a.artifact_masks["ruler"].any()
    else:
        assert a.artifact_masks == {}


# ----------------------------------------------------------------- image modes and bit depths


def _gradient16(h: int = 8, w: int = 8) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint16).reshape(h, w) * (65535 // (h * w - 1))).astype(np.uint16)


def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    from PIL import Image

    from robsal.data.cache import load_image

    a = _gradient16()
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow reads it as a wide mode
    img, wh = load_image(path, 8, center_crop=False)
    expect = np.rint(a / 65535.0 * 255).astype(np.uint8)
    assert wh == (8, 8)
    np.testing.assert_array_equal(img[0], expect)
    np.testing.assert_array_equal(img[1], expect)  # grey replicated to 3 channels
    assert abs(float(img.mean()) - float(expect.mean())) < 1e-9 and img.mean() < 200  # not "nearly white"


def test_float_and_wide_integer_images_use_their_range(tmp_path):
    from PIL import Image

    from robsal.data.cache import _to_rgb

    f = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), mode="F")
    np.testing.assert_array_equal(np.asarray(_to_rgb(f, "f"))[..., 0].ravel(), np.rint(np.linspace(0, 255, 16)))
    big = Image.fromarray(np.array([[-1000, 0], [1000, 3000]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(np.asarray(_to_rgb(big, "i"))[..., 0], [[0, 64], [128, 255]])


@pytest.mark.parametrize("fg", [1, 255])
def test_masks_stored_as_0_1_or_0_255_give_the_same_mask(tmp_path, fg):
    from PIL import Image

    from robsal.data.cache import load_mask

    m = np.zeros((8, 8), np.uint8)
    m[2:6, 3:7] = fg
    path = tmp_path / f"m{fg}.png"
    Image.fromarray(m, mode="L").save(path)
    out = load_mask(path, 8, (8, 8), center_crop=False)
    np.testing.assert_array_equal(out, (m > 0).astype(np.uint8))
    assert out.sum() == 16


def test_a_mask_with_other_values_is_a_one_line_error_naming_the_file(tmp_path):
    from PIL import Image

    from robsal.data.cache import load_mask

    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 128  # grey levels: a threshold would be a guess
    path = tmp_path / "grey.png"
    Image.fromarray(m, mode="L").save(path)
    with pytest.raises(DataError, match=r"grey\.png: mask values are \{0, 128\}, not \{0, 1\} or \{0, 255\}") as exc:
        load_mask(path, 8, (8, 8))
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------- full disk while caching


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"i{k}.png"
        Image.fromarray(np.full((8, 8, 3), k % 255, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_full_disk_at_reserve_is_a_disk_full_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from robsal.io import DiskFullError

    def full(fd, off, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = tmp_path / "cache"
    with pytest.raises(DiskFullError, match="no space left"):
        load_arrays(_rows(_images(tmp_path / "img", 3)), 16, cache_dir=cache, progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no temporary .npy, no done.json


def test_full_disk_on_a_real_small_file_system_is_one_error_not_sigbus(tmp_path, small_fs):
    import subprocess
    import sys

    mnt = small_fs("size=1m")
    paths = _images(tmp_path / "img", 40)  # 40 x 3 x 128^2 = 1.9 MB of cache > 1 MiB
    code = (
        "import sys, pandas as pd\n"
        "from robsal.data.cache import load_arrays\n"
        "from robsal.io import DiskFullError\n"
        f"rows = pd.read_pickle({str(tmp_path / 'rows.pkl')!r})\n"
        "try:\n"
        f"    load_arrays(rows, 128, cache_dir={str(mnt)!r}, progress=False)\n"
        "except DiskFullError as e:\n"
        "    print('DISKFULL', e); sys.exit(2)\n"
    )
    _rows(paths).to_pickle(tmp_path / "rows.pkl")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "DISKFULL" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-500:])
    assert not [p for p in mnt.rglob("*") if p.is_file()]  # nothing half-written left on the small disk
