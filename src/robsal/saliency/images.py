"""Explaining arbitrary image files (``robsal explain --model DIR --image FILE``).

Each file is read with PIL (a ``.dcm`` file with pydicom, decoded exactly as in folder
datasets: :mod:`robsal.data.dicom`), converted to RGB, centre-cropped to a square (the
shorter side) and resized (bilinear, antialiased) to the model's ``image_size`` from
``model.json``. The maps go to ``OUT/saliency/<model>/<method>.npz`` (the run
layout, image ids = file names without extension) and the figures to ``OUT/figures/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from robsal.config import Config
from robsal.data import PreparedData
from robsal.errors import ConfigError, DataError
from robsal.models import load
from robsal.saliency.methods import get_method
from robsal.saliency.run import compute_maps, write_figures
from robsal.utils import resolve_device


def load_image(path: str | Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 from an image file: RGB, centre square crop, resize."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with _open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; give a JPEG, PNG or DICOM (.dcm) file") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


def _open(path: Path) -> Image.Image:
    """PIL image of a JPEG/PNG, or of a DICOM file decoded as in datasets (robsal.data.dicom)."""
    from robsal.data.dicom import is_dicom, read_dicom_rgb

    if is_dicom(path):
        return Image.fromarray(read_dicom_rgb(path))  # rescale, window, MONOCHROME1 inverted, gray -> 3 channels
    return Image.open(path)


def explain_files(
    model_dirs: Sequence[str | Path],
    image_paths: Sequence[str | Path],
    out_dir: str | Path,
    cfg: Config,
    *,
    methods: Sequence[str] | None = None,
    target: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """Maps of every model x method for image files; returns model -> method -> npz path.

    ``target``: a class name or index of the models, or None to explain each model's
    predicted class. Method options come from ``cfg.saliency``. All models must share
    classes and input size.
    """
    dev = resolve_device(device if device is not None else cfg.device)
    if not model_dirs or not image_paths:
        raise ConfigError("give at least one --model directory and one --image file")
    method_names = list(methods) if methods else list(cfg.saliency.methods)
    for m in method_names:
        get_method(m)
    models: dict[str, torch.nn.Module] = {}
    for d in model_dirs:
        name = Path(d).resolve().name
        if name in models:
            raise ConfigError(f"two --model directories are both named {name!r}; copy one under another name")
        models[name] = load(d, dev)
    first = next(iter(models.values()))
    classes = list(first.meta["classes"])
    size = int(first.meta.get("image_size", 224))
    for name, m in models.items():
        if list(m.meta["classes"]) != classes or int(m.meta.get("image_size", 224)) != size:
            raise ConfigError(f"model {name!r} has other classes or input size than {next(iter(models))!r}")
    if target is None:
        tgt: str | int = "prediction"
    elif str(target) in classes:
        tgt = classes.index(str(target))
    elif str(target).isdigit() and int(target) < len(classes):
        tgt = int(target)
    else:
        raise ConfigError(f"--target {target!r} is not a class of the model; classes: {', '.join(classes)}")

    images = np.stack([load_image(p, size) for p in image_paths])
    ids = [Path(p).stem for p in image_paths]
    if len(set(ids)) != len(ids):
        ids = [f"{i}_{s}" for i, s in enumerate(ids)]
    label = tgt if isinstance(tgt, int) else -1  # -1: no label known
    data = PreparedData(
        images=images,
        labels=np.full(len(ids), label, dtype=np.int64),
        classes=classes,
        splits=pd.DataFrame(
            {"image_id": ids, "lesion_id": ids, "label": "", "split": "user", "fold": pd.NA}
        ),
    )
    rows = np.arange(len(ids))
    out_dir = Path(out_dir)
    out, raw = compute_maps(out_dir, models, data, rows, method_names, cfg, target=tgt, device=dev, progress=progress)
    write_figures(out_dir, data, rows, raw, cfg)
    return out
