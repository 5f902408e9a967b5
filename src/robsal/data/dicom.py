"""DICOM images (``.dcm``) in folder datasets, decoded to 8-bit RGB with pydicom (optional extra).

One frame per file. Grayscale (``MONOCHROME1``/``MONOCHROME2``), in this order:

1. modality rescale: ``x = stored * RescaleSlope + RescaleIntercept`` (defaults 1 and 0);
2. window to [0, 1]: the file's ``WindowCenter`` c / ``WindowWidth`` w (the first value
   when several are given) with its ``VOILUTFunction``:

   * ``LINEAR`` (default; DICOM PS3.3 C.11.2.1.2.1):
     ``y = clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)`` (w = 1: ``y = x > c - 0.5``);
   * ``LINEAR_EXACT``: ``y = clip((x - c) / w + 0.5, 0, 1)``;
   * ``SIGMOID``: ``y = 1 / (1 + exp(-4 (x - c) / w))``;

   without a window, a robust percentile window: ``lo, hi`` = the 0.5 and 99.5
   percentiles of ``x``, ``y = clip((x - lo) / (hi - lo), 0, 1)`` (all 0 when hi = lo);
3. ``MONOCHROME1`` (white = low values) is inverted: ``y = 1 - y``;
4. ``round(255 y)`` as uint8, replicated to 3 channels: the ImageNet-style models take
   RGB input, and three equal channels are what ``PIL.Image.convert("RGB")`` makes of a
   grayscale PNG, so a DICOM and a PNG export of it give the same input.

RGB files (``SamplesPerPixel`` 3, ``PhotometricInterpretation`` RGB) are kept as they are
(values above 8 bits scaled by ``255 / (2**BitsStored - 1)``). A VOI LUT sequence, palette
colour and YBR files are not interpreted. Multi-frame files are refused with a one-line
error naming the file. Nothing here writes to disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robsal.errors import DataError

DICOM_EXTS = (".dcm",)
INSTALL_HINT = 'reading DICOM files needs pydicom: pip install "robsal[dicom]"'
PERCENTILE_WINDOW = (0.5, 99.5)  # robust window (percent) when the file has none


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTS


def available() -> bool:
    """Whether pydicom can be imported."""
    try:
        import pydicom  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _pydicom():  # noqa: ANN202
    try:
        import pydicom
    except ModuleNotFoundError:
        raise DataError(INSTALL_HINT) from None
    return pydicom


def _first(value) -> float | None:  # noqa: ANN001  a DICOM value, possibly multi-valued
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM VOI window to rescaled values ``x`` -> float64 in [0, 1] (formulas above)."""
    function = (function or "LINEAR").upper()
    x = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def percentile_window(x: np.ndarray) -> np.ndarray:
    """Robust window: the 0.5-99.5 % percentiles of ``x`` map to 0 and 1 -> float64 in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.percentile(x, PERCENTILE_WINDOW)
    if not hi > lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def read_dicom_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of a single-frame DICOM file (see the module docstring); DataError if unusable."""
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: cannot read DICOM ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "replace the file or remove it from the dataset"
        ) from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: the DICOM file has no pixel data; remove it from the dataset")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DataError(
            f"{path}: multi-frame DICOM ({frames} frames); robsal reads one frame per file: "
            "save each frame you need as its own .dcm file"
        )
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if not ((spp == 1 and pi in ("MONOCHROME1", "MONOCHROME2")) or (spp == 3 and pi == "RGB")):
        raise DataError(
            f"{path}: photometric interpretation {pi or 'missing'} with {spp} sample(s) per pixel is not supported "
            "(robsal reads MONOCHROME1, MONOCHROME2 and RGB); convert the file"
        )
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001  pydicom raises many types (missing codec, truncated data)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(tsyntax, "name", tsyntax) or "unknown transfer syntax"
        raise DataError(
            f"{path}: cannot decode the DICOM pixel data ({name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "store it uncompressed or install the decoder pydicom names (e.g. pylibjpeg)"
        ) from None
    if spp == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataError(f"{path}: RGB pixel data has shape {arr.shape}, expected (rows, columns, 3); convert the file")
        if arr.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8) or 8)
            arr = np.clip(np.rint(arr.astype(np.float64) * 255.0 / (2**bits - 1)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    if arr.ndim != 2:
        raise DataError(f"{path}: grayscale pixel data has shape {arr.shape}, expected (rows, columns); convert the file")
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    x = arr.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    if not np.isfinite(x).all() or x.size == 0:
        raise DataError(f"{path}: the DICOM image has no pixels or non-finite values; replace the file")
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise DataError(f"{path}: VOILUTFunction {function} is unknown (LINEAR, LINEAR_EXACT, SIGMOID); fix the header")
        if width < (1.0 if function == "LINEAR" else 0.0) or width == 0:
            raise DataError(
                f"{path}: WindowWidth {width:g} is invalid ({function} needs {'>= 1' if function == 'LINEAR' else '> 0'}); "
                "fix the header or delete WindowCenter/WindowWidth to use a percentile window"
            )
        y = window(x, center, width, function)
    else:
        y = percentile_window(x)
    if pi == "MONOCHROME1":
        y = 1.0 - y
    g = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
