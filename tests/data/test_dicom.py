"""DICOM images in folder datasets: rescale, window, MONOCHROME1, RGB, multi-frame refusal.

The files are written here with pydicom; every decoded value is checked against the
formulas of :mod:`robsal.data.dicom` computed independently in the test.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from robsal.config import load_config  # noqa: E402
from robsal.data.cache import load_image  # noqa: E402
from robsal.data.check import check_dataset  # noqa: E402
from robsal.data.dicom import read_dicom_rgb  # noqa: E402
from robsal.data.pipeline import prepare  # noqa: E402
from robsal.errors import DataError  # noqa: E402


def write_dicom(path, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None,
                voi_function=None, frames=1, bits=16, signed=False):
    """A single- (or multi-) frame uncompressed DICOM file with the given stored pixel values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    rgb = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    dtype = {8: np.uint8, 16: np.int16 if signed else np.uint16}[bits]
    ds.PixelData = pixels.astype(dtype).tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover  pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def ramp(h=12, w=16, lo=0, hi=4000):
    return np.linspace(lo, hi, h * w).reshape(h, w).round().astype(np.int64)


def u8(y):
    return np.clip(np.rint(np.asarray(y, np.float64) * 255.0), 0, 255).astype(np.uint8)


def test_monochrome2_without_rescale_or_window_uses_the_percentile_window(tmp_path):
    stored = ramp()
    stored[0, 0] = 60000  # an outlier: the 0.5-99.5 % window ignores it
    rgb = read_dicom_rgb(write_dicom(tmp_path / "a.dcm", stored))
    x = stored.astype(np.float64)
    lo, hi = np.percentile(x, 0.5), np.percentile(x, 99.5)
    want = u8(np.clip((x - lo) / (hi - lo), 0, 1))
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], want)
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 0])  # grayscale replicated to 3 channels
    np.testing.assert_array_equal(rgb[..., 2], rgb[..., 0])
    assert rgb[0, 0, 0] == 255 and rgb[0, 1, 0] == 0 and 0 < rgb[6, 8, 0] < 255


def test_rescale_then_linear_window(tmp_path):
    stored = ramp(lo=0, hi=3000)
    rgb = read_dicom_rgb(write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-1024, center=40, width=400))
    x = stored * 2.0 - 1024.0  # Hounsfield units
    c, w = 40.0, 400.0
    want = u8(np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1))  # DICOM PS3.3 C.11.2.1.2.1
    np.testing.assert_array_equal(rgb[..., 0], want)
    assert (want == 0).any() and (want == 255).any() and ((want > 0) & (want < 255)).any()


def test_rescale_without_window_windows_the_rescaled_values(tmp_path):
    stored = ramp(lo=-500, hi=1500)
    rgb = read_dicom_rgb(write_dicom(tmp_path / "s.dcm", stored, slope=0.5, intercept=100, signed=True))
    x = stored * 0.5 + 100.0
    lo, hi = np.percentile(x, 0.5), np.percentile(x, 99.5)
    np.testing.assert_array_equal(rgb[..., 0], u8(np.clip((x - lo) / (hi - lo), 0, 1)))


def test_monochrome1_is_inverted(tmp_path):
    stored = ramp(lo=0, hi=1000)
    two = read_dicom_rgb(write_dicom(tmp_path / "m2.dcm", stored, center=500, width=600))
    one = read_dicom_rgb(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", center=500, width=600))
    y = np.clip((stored - 499.5) / 599.0 + 0.5, 0, 1)
    np.testing.assert_array_equal(two[..., 0], u8(y))
    np.testing.assert_array_equal(one[..., 0], u8(1.0 - y))
    assert one[0, 0, 0] == 255 and two[0, 0, 0] == 0  # the lowest value is white in MONOCHROME1


def test_multi_valued_window_takes_the_first_and_other_voi_functions(tmp_path):
    stored = ramp(lo=0, hi=1000)
    rgb = read_dicom_rgb(write_dicom(tmp_path / "mv.dcm", stored, center=[300, 800], width=[200, 50]))
    np.testing.assert_array_equal(rgb[..., 0], u8(np.clip((stored - 299.5) / 199.0 + 0.5, 0, 1)))
    exact = read_dicom_rgb(write_dicom(tmp_path / "le.dcm", stored, center=300, width=200, voi_function="LINEAR_EXACT"))
    np.testing.assert_array_equal(exact[..., 0], u8(np.clip((stored - 300) / 200.0 + 0.5, 0, 1)))
    sig = read_dicom_rgb(write_dicom(tmp_path / "sg.dcm", stored, center=300, width=200, voi_function="SIGMOID"))
    np.testing.assert_array_equal(sig[..., 0], u8(1 / (1 + np.exp(-4 * (stored - 300) / 200.0))))


def test_rgb_dicom_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    rgb = read_dicom_rgb(write_dicom(tmp_path / "c.dcm", pix, photometric="RGB", bits=8))
    np.testing.assert_array_equal(rgb, pix)


def test_multi_frame_is_refused_naming_the_file(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.stack([ramp(), ramp()]), frames=2)
    with pytest.raises(DataError) as err:
        read_dicom_rgb(path)
    msg = str(err.value)
    assert "\n" not in msg and "cine.dcm" in msg and "multi-frame" in msg and "2 frames" in msg


def test_bad_window_width_and_non_dicom_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="WindowWidth 0.5 is invalid"):
        read_dicom_rgb(write_dicom(tmp_path / "w.dcm", ramp(), center=10, width=0.5))
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DataError, match=r"fake\.dcm: cannot read DICOM") as err:
        read_dicom_rgb(tmp_path / "fake.dcm")
    assert "\n" not in str(err.value)


def test_missing_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ModuleNotFoundError
    with pytest.raises(DataError) as err:
        read_dicom_rgb(path)
    assert str(err.value) == 'reading DICOM files needs pydicom: pip install "robsal[dicom]"'


def _dicom_folder(tmp_path, n=6):
    """root/<class>/*.dcm (CT-like, windowed) with PNG masks for half of them in root_masks/."""
    root = tmp_path / "ct"
    rng = np.random.default_rng(1)
    for cls, base in (("cyst", 0), ("tumour", 60)):
        (root / cls).mkdir(parents=True)
        (tmp_path / "ct_masks" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stored = rng.integers(900, 1200, (20, 24)) + base
            kw = {"center": 40, "width": 350} if i % 2 else {}
            photometric = "MONOCHROME1" if i % 3 == 0 else "MONOCHROME2"
            write_dicom(root / cls / f"{cls}_{i}.dcm", stored, slope=1, intercept=-1024, photometric=photometric, **kw)
            if i % 2 == 0:
                m = np.zeros((20, 24), np.uint8)
                m[5:15, 8:16] = 255
                Image.fromarray(m).save(tmp_path / "ct_masks" / cls / f"{cls}_{i}.png")
    return root


def test_folder_of_dicom_with_png_masks_end_to_end(tmp_path):
    root = _dicom_folder(tmp_path)
    report = check_dataset(root)
    assert report.ok, report.render()
    assert report.counts.loc["cyst", "images"] == 6 and report.counts.loc["cyst", "without_mask"] == 3
    cfg = load_config("tiny", [f"data.root={root}", "data.source=auto", "data.classes=[cyst,tumour]",
                               "data.image_size=16", "data.train_per_class=3", "data.test_per_class=3",
                               "data.val_per_class=1", "data.n_folds=2"])
    data = prepare(cfg, tmp_path / "run", progress=False)
    assert data.images.shape == (12, 3, 16, 16)
    for r, (iid, label) in enumerate(zip(data.splits["image_id"], data.splits["label"])):
        path = root / label / f"{iid}.dcm"
        want, wh = load_image(path, 16, center_crop=True)
        assert wh == (24, 20)
        np.testing.assert_array_equal(data.images[r], want)
        # 24x20 -> central 20x20 -> 16x16, from the decoded 8-bit RGB of the DICOM
        ref = Image.fromarray(read_dicom_rgb(path)).crop((2, 0, 22, 20)).resize((16, 16), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(data.images[r], np.asarray(ref).transpose(2, 0, 1))
        assert bool(data.has_mask[r]) == (int(iid.rsplit("_", 1)[1]) % 2 == 0)
    assert data.masks is not None and data.masks[data.has_mask].sum() > 0


def test_data_check_reports_a_multi_frame_file_and_missing_pydicom_once(tmp_path, monkeypatch):
    root = _dicom_folder(tmp_path, n=3)
    write_dicom(root / "cyst" / "cine.dcm", np.stack([ramp(20, 24), ramp(20, 24)]), frames=2)
    report = check_dataset(root)
    assert not report.ok and any("cine.dcm" in p and "multi-frame" in p for p in report.problems)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    report = check_dataset(root)
    assert report.problems == [f'7 .dcm image(s) under {root}: reading DICOM files needs pydicom: pip install "robsal[dicom]"']


def test_explain_reads_a_dicom_file_as_datasets_do(tmp_path):
    """``robsal explain --image x.dcm``: the file is decoded by read_dicom_rgb (MONOCHROME1 inverted),
    then cropped and resized like any image; a multi-frame file gets the datasets' one-line error."""
    from robsal.saliency.images import load_image as load_explained

    stored = np.tile(np.arange(0, 1000, 25, dtype=np.uint16), (40, 1))  # 40x40 ramp, left dark
    path = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", center=500, width=1000)
    img = load_explained(path, 40)  # same size: no resampling
    assert img.shape == (3, 40, 40)
    np.testing.assert_array_equal(img, read_dicom_rgb(path).transpose(2, 0, 1))
    assert img[0, 0, 0] > img[0, 0, -1]  # MONOCHROME1: the low stored values are bright
    multi = write_dicom(tmp_path / "mf.dcm", np.stack([stored, stored]), frames=2)
    with pytest.raises(DataError, match="multi-frame DICOM"):
        load_explained(multi, 40)
