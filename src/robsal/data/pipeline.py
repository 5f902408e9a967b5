"""``prepare``: config -> dataset on disk -> splits -> cached arrays -> :class:`PreparedData`.

Sources (``data.source``):

* ``synthetic`` with ``data.root`` null: the built-in generator writes
  ``RUN/data/`` (or, without a run directory, a cache folder keyed by the
  generator settings) and it is read like HAM10000.
* ``ham10000``: :mod:`robsal.data.ham10000`.
* ``folder``: :mod:`robsal.data.folder`.
* ``medmnist`` (or ``medmnist:<set>``): ``root`` is a MedMNIST ``.npz`` file
  (:mod:`robsal.data.medmnist`); its official train/val/test membership is kept.
* ``auto``: MedMNIST when ``root`` is a ``.npz`` file, HAM10000 when ``root`` holds
  a CSV with ``image_id`` and ``dx`` columns, else the folder layout.

Splits: ``RUN/splits.csv`` when it exists, else ``data.splits``, else new ones
(:func:`robsal.data.splits.make_splits`); the result is written to
``RUN/splits.csv`` so later stages and runs reuse exactly the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robsal.config import Config, DataConfig, load_run_config
from robsal.data import synthetic
from robsal.data.cache import default_cache_dir, load_arrays
from robsal.data.folder import read_folder
from robsal.data.ham10000 import find_metadata, looks_like_metadata, read_ham10000
from robsal.data.index import INDEX_COLUMNS, DatasetIndex, Problems, check_root, inside
from robsal.data.medmnist import is_medmnist_source, looks_like_npz, read_medmnist
from robsal.data.prepared import PreparedData
from robsal.data.splits import check_splits, make_official_splits, make_splits, read_splits, write_splits
from robsal.errors import DataError
from robsal.rundir import fingerprint

SPLITS_FILE = "splits.csv"


def detect_layout(root: str | Path) -> str:
    """``medmnist`` for a ``.npz`` file, ``ham10000`` when ``root`` has a metadata CSV (image_id, dx
    columns), else ``folder``."""
    if looks_like_npz(root) and not Path(root).expanduser().is_dir():
        return "medmnist"
    root = check_root(root)
    return "ham10000" if find_metadata(root) is not None or looks_like_metadata(root) is not None else "folder"


def read_dataset(root: str | Path, source: str = "auto", problems: Problems | None = None) -> DatasetIndex:
    """List the dataset at ``root`` with the given layout (``auto`` detects it)."""
    layout = detect_layout(root) if source in ("auto", "synthetic") else source
    if is_medmnist_source(layout):
        return read_medmnist(root, layout)
    if layout == "ham10000":
        index = read_ham10000(root, problems)
    elif layout == "folder":
        index = read_folder(root, problems)
    else:
        raise DataError(f"data.source: unknown source {source!r}; use synthetic, ham10000, folder, medmnist[:<set>] or auto")
    if len(index.table) == 0:  # e.g. a metadata CSV with a header and no rows
        what = "its metadata CSV lists no images" if layout == "ham10000" else "no class folder holds an image"
        if problems is not None and problems.items:  # data check: the reasons are listed already
            what = "no usable image, for the reasons above"
        raise DataError(f"{root}: the dataset is empty ({what}); point --data at a folder with images")
    return index


def synthetic_root(cfg: Config, run_dir: str | Path | None, progress: bool = True) -> Path:
    """Generate (or reuse) the built-in synthetic dataset for ``cfg.data.synth``."""
    settings = synthetic.SynthSettings.from_config(cfg.data.synth)
    wanted = {"version": synthetic.SYNTH_VERSION, "settings": settings.to_dict()}
    if run_dir is not None:
        root = Path(run_dir) / "data"
    else:
        h = fingerprint(cfg, "data_cache", **wanted)
        root = default_cache_dir(cfg.data.cache_dir) / "synthetic" / h
    have = synthetic.read_settings(root)
    if have is not None and {k: have.get(k) for k in wanted} == wanted:
        return root
    if root.exists() and any(root.iterdir()) and have is None:
        raise DataError(
            f"{root} holds files but no readable synth.json, so it is not a robsal synthetic dataset; "
            "move the files away (robsal then generates the dataset there again)"
        )
    return synthetic.generate(root, settings, progress=progress, overwrite=True)


def dataset_root(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, str]:
    """(folder, source) the config points at, generating the synthetic set if needed."""
    d: DataConfig = cfg.data
    if d.source == "synthetic" and d.root is None:
        return synthetic_root(cfg, run_dir, progress), "ham10000"
    if d.root is None:
        raise DataError(f"data.source={d.source} needs a dataset folder: pass --data DIR (or set data.root)")
    if is_medmnist_source(d.source) or (d.source == "auto" and detect_layout(d.root) == "medmnist"):
        source = d.source if is_medmnist_source(d.source) else "medmnist"
        return Path(d.root).expanduser(), source
    return check_root(d.root), d.source


def new_splits(cfg: Config, index: DatasetIndex, table=None):  # -> DataFrame; table: rows of index.table
    """Fresh splits of ``index`` (or of its rows ``table``) as ``cfg.data`` asks.

    A dataset with an official split (MedMNIST: column ``official_split``) keeps it
    (:func:`robsal.data.splits.make_official_splits`); others are split by
    :func:`robsal.data.splits.make_splits`.
    """
    d = cfg.data
    table = index.table if table is None else table
    source = f"the dataset at {index.root}"
    if "official_split" in table.columns:
        return make_official_splits(
            table, d.classes, train_per_class=d.train_per_class, test_per_class=d.test_per_class,
            val_per_class=d.val_per_class, n_folds=d.n_folds, seed=d.seed, source=source,
        )
    return make_splits(
        table, d.classes, train_per_class=d.train_per_class, test_per_class=d.test_per_class,
        val_per_class=d.val_per_class, n_folds=d.n_folds, split_by=d.split_by, seed=d.seed, source=source,
    )


def make_or_reuse_splits(cfg: Config, index: DatasetIndex, run_dir: str | Path | None, *, write: bool = True):  # -> DataFrame
    d = cfg.data
    run_splits = Path(run_dir) / SPLITS_FILE if run_dir is not None else None
    source = f"the dataset at {index.root}"
    path, fix = None, "use the splits file made for this dataset"
    if run_splits is not None and run_splits.exists():
        splits, path = read_splits(run_splits), run_splits
        # the run's own record (edited or damaged): drawn again from the same seed it is the same
        fix = "restore it, or delete it to draw the splits again (same config, same splits)"
    elif d.splits:
        splits, path = read_splits(d.splits), d.splits
    else:
        splits = new_splits(cfg, index)
    check_splits(splits, index.table, d.classes, source, path, fix)
    if write and run_splits is not None and not run_splits.exists():
        write_splits(splits, run_splits)
    return splits


def check_contained(index: DatasetIndex, rows=None) -> None:  # rows: DataFrame of index.table rows
    """Every image and mask file of ``rows`` (default: the whole index) lies inside the dataset.

    Images must lie inside ``index.root`` (links resolved); masks too, or, for the folder
    layout, inside its sibling ``<root>_masks`` folder. The loaders already refuse ids and
    files that leave the root; this is the last check before any file is opened, whatever
    produced the index. Raises DataError naming the image and the file.
    """
    from robsal.data.folder import masks_root

    table = index.table if rows is None else rows
    roots = [Path(os.path.realpath(index.root))]
    mask_roots = roots + ([Path(os.path.realpath(masks_root(Path(index.root))))] if index.layout == "folder" else [])
    for col in [c for c in INDEX_COLUMNS if c == "path" or c.endswith("_path")]:
        if col not in table.columns:
            continue
        allowed = roots if col == "path" else mask_roots
        for image_id, value in zip(table["image_id"], table[col]):
            if value is None or (isinstance(value, float) and value != value) or value == "":
                continue
            if not any(inside(r, Path(value)) for r in allowed):
                raise DataError(
                    f"image {image_id}: {col} {value} lies outside the dataset folder {index.root}; "
                    "dataset files must be inside the folder passed with --data"
                )


def check_classes(index: DatasetIndex, classes: list[str]) -> None:
    have = index.classes
    unknown = [c for c in classes if c not in have]
    if unknown:
        raise DataError(
            f"data.classes: class {unknown[0]!r} is not in the dataset at {index.root} "
            f"(it has: {', '.join(have) or 'none'}); fix data.classes"
        )


def prepare(cfg: Config, run_dir: str | Path | None = None, *, progress: bool = True) -> PreparedData:
    """Dataset -> splits -> cached uint8 arrays (Section 2, Appendix A); see the module docstring."""
    root, source = dataset_root(cfg, run_dir, progress)
    index = read_dataset(root, source)
    check_classes(index, cfg.data.classes)
    splits = make_or_reuse_splits(cfg, index, run_dir, write=False)
    rows = index.table.set_index("image_id").loc[splits["image_id"]].reset_index()
    check_contained(index, rows)
    if index.layout == "medmnist":
        from robsal.data import medmnist

        arrays = medmnist.load_arrays(rows, cfg.data.image_size, center_crop=cfg.data.center_crop,
                                      cache_dir=cfg.data.cache_dir, progress=progress)
    else:
        arrays = load_arrays(
            rows, cfg.data.image_size, center_crop=cfg.data.center_crop, with_artifacts=index.has_artifact_masks,
            cache_dir=cfg.data.cache_dir, progress=progress,
        )
    # splits.csv only once every image of it decoded: after a bad-image error, fixing the
    # dataset (e.g. deleting the image) and re-running draws the splits again
    run_splits = Path(run_dir) / SPLITS_FILE if run_dir is not None else None
    if run_splits is not None and not run_splits.exists():
        write_splits(splits, run_splits)
    class_index = {c: i for i, c in enumerate(cfg.data.classes)}
    labels = splits["label"].map(class_index).to_numpy(dtype=np.int64)
    return PreparedData(
        images=arrays.images, labels=labels, classes=list(cfg.data.classes), splits=splits,
        masks=arrays.masks, has_mask=arrays.has_mask, artifact_masks=arrays.artifact_masks,
    )


def load_run_data(run_dir: str | Path, *, progress: bool = False) -> PreparedData:
    """The data of an existing run (``RUN/config.yaml`` + ``RUN/splits.csv``)."""
    cfg = load_run_config(run_dir)
    return prepare(cfg, run_dir, progress=progress)
