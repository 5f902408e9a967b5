"""Checked readers of the run directory's array and table records (not JSON objects).

=====================================  ====================  ==============================
file                                   reader                written by
=====================================  ====================  ==============================
``saliency/<model>/<method>.npz``      :func:`read_saliency`  ``robsal explain``
``metrics/per_image.csv``              :func:`read_per_image` ``robsal evaluate``
``tune/folds.jsonl``                   :func:`read_folds`     ``robsal tune``
=====================================  ====================  ==============================

Like the records of :mod:`robsal.rundir.records`, a damaged, truncated or hand-edited file
is one line (:class:`~robsal.rundir.RecordError`) naming the file, the array, column or line,
and how to rebuild it, never a traceback deep inside a stage or silently wrong numbers.
Each file must be a regular file (a pipe would block, ``/dev/zero`` never end).
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from robsal.rundir.schema import MAX_RECORD_BYTES, RecordError, check_record_file, run_of

__all__ = ["MAX_RECORD_BYTES", "PER_IMAGE_COLUMNS", "check_record_file", "read_folds", "read_npz", "read_per_image",
           "read_saliency"]

PER_IMAGE_COLUMNS = ["image_id", "model", "method", "metric", "value"]

def _explain_fix(path: Path) -> str:
    run = run_of(path, 2)
    return f"re-run `robsal explain --run {run}`" if run is not None else "re-run `robsal explain`"


def read_npz(path: str | Path, fix: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (never unpickles objects); a file that is no ``.npz``, truncated
    or holding Python objects is a RecordError."""
    path = check_record_file(path, fix, max_bytes=None)
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a bare .npy array, not an archive
            raise RecordError(f"{path} is a single .npy array, not an .npz archive; {fix}")
        with data:
            return {k: data[k] for k in data.files}
    except RecordError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise RecordError(f"{path} holds Python objects, which robsal never unpickles; {fix}") from None
        raise RecordError(f"{path} is not a readable .npz ({str(exc).splitlines()[0] if str(exc) else 'bad'}); "
                          f"{fix}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, NotImplementedError) as exc:
        raise RecordError(f"{path} is not a readable .npz ({type(exc).__name__}); {fix}") from None
    except OSError as exc:
        if exc.errno is None:  # numpy's "cannot load file" for unknown content
            raise RecordError(f"{path} is not a readable .npz; {fix}") from None
        raise


def read_saliency(path: str | Path, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``saliency/<model>/<method>.npz``, checked: maps (N, H, W) of finite real
    numbers, N distinct image ids (text, returned as ``str``), N integer targets (and predictions,
    when present) in ``[0, n_classes)``."""
    path = Path(path)
    fix = _explain_fix(path)
    arrays = read_npz(path, fix)

    def bad(text: str) -> RecordError:
        return RecordError(f"{path}: {text}; {fix}")

    missing = [k for k in ("maps", "image_ids", "targets") if k not in arrays]
    if missing:
        raise bad(f"the array(s) {', '.join(missing)} are missing")
    maps, ids = arrays["maps"], arrays["image_ids"]
    if maps.dtype.kind not in "fiub" or maps.ndim != 3 or min(maps.shape[1:], default=0) < 1:
        raise bad(f"maps must be (N, H, W) real numbers, got {maps.dtype} {maps.shape}")
    n = maps.shape[0]
    if ids.dtype.kind not in "US" or ids.shape != (n,):
        raise bad(f"image_ids must be {n} image ids (text), got {ids.dtype} {ids.shape}")
    ids = ids.astype(str)
    if len(set(ids.tolist())) != n:
        first = next(i for k, i in enumerate(ids) if i in ids[:k])
        raise bad(f"image id {first} is listed twice")
    for key in ("targets", "predictions"):
        if key not in arrays:
            continue
        v = arrays[key]
        if v.dtype.kind not in "iu" or v.shape != (n,):
            raise bad(f"{key} must be {n} class indices (integers), got {v.dtype} {v.shape}")
        if n and (v.min() < 0 or (n_classes is not None and v.max() >= n_classes)):
            want = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
            raise bad(f"{key} must be class indices {want}, got {int(v.min())}..{int(v.max())}")
    if not np.isfinite(maps).all():
        raise bad("maps hold NaN or infinite values")
    return {**arrays, "image_ids": ids}


def read_per_image(path: str | Path) -> Any:
    """``metrics/per_image.csv`` (image_id, model, method, metric, value) as a DataFrame: text
    columns as text, ``value`` as finite floats (empty cells dropped)."""
    import pandas as pd

    path = Path(path)
    run = run_of(path, 1)
    fix = f"re-run `robsal evaluate --run {run}`" if run is not None else "re-run `robsal evaluate`"
    check_record_file(path, fix)
    text_cols = [c for c in PER_IMAGE_COLUMNS if c != "value"]
    try:
        df = pd.read_csv(path, dtype={c: str for c in text_cols}, keep_default_na=False, na_values={"value": [""]})
    except pd.errors.EmptyDataError:
        raise RecordError(f"{path} is empty; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordError(f"{path} is not a readable CSV ({first}); {fix}") from None
    missing = [c for c in PER_IMAGE_COLUMNS if c not in df.columns]
    if missing:
        raise RecordError(f"{path} lacks the column(s) {', '.join(missing)}; {fix}")
    values = pd.to_numeric(df["value"], errors="coerce")
    bad = (values.isna() & df["value"].notna()) | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecordError(f"{path} row {i + 2}: value {df['value'].iloc[i]!r} is not a finite number; {fix}")
    df["value"] = values.astype(np.float64)
    return df.dropna(subset=["value"])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_folds(path: str | Path) -> dict[tuple[float, int, int], float]:
    """``tune/folds.jsonl`` (one finished CV fit per line: lr, batch_size, fold, accuracy) as
    {(lr, batch_size, fold): accuracy}; a damaged line is a RecordError."""
    path = Path(path)
    fix = "delete it to redo the cross-validation"
    check_record_file(path, fix)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"{path} is not UTF-8 text; {fix}") from None
    done: dict[tuple[float, int, int], float] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ok = isinstance(r, dict) and _is_num(r.get("lr")) and r["lr"] > 0 and _is_int(r.get("batch_size")) \
                and r["batch_size"] >= 1 and _is_int(r.get("fold")) and _is_num(r.get("accuracy")) \
                and 0 <= r["accuracy"] <= 1
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise RecordError(f"{path} line {lineno} is not a cross-validation result (lr, batch_size, fold, "
                              f"accuracy in [0, 1]); {fix}")
        done[(float(r["lr"]), int(r["batch_size"]), int(r["fold"]))] = float(r["accuracy"])
    return done
