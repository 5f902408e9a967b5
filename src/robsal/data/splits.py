"""Balanced, lesion-grouped, stratified, seeded splits (paper Appendix A and D).

Per class: ``test_per_class`` images go to test, ``train_per_class`` to train
(800 / 299 per class in the paper); ``val_per_class`` of the test images become
the validation split (Appendix D: 150 balanced images taken from the 897 test
images, leaving 747). The train split is cut into ``n_folds`` CV folds
(stratified, ``sklearn.model_selection.StratifiedGroupKFold``).

Deviation from the paper: the paper split HAM10000 by *image*; HAM10000 has
several images of many lesions, so an image split puts views of the same lesion
into train and test (leakage). robsal splits by ``lesion_id`` (whole lesions go
to one split and one fold). ``split_by="image"`` reproduces the paper exactly.

Selection walks each class's lesions in a seeded random order and takes whole
lesions while they fit; only when no remaining lesion fits exactly is the last
lesion trimmed (its unused views are dropped, never put in another split).

Counts: ``None`` for ``train_per_class`` means all remaining images
(unbalanced); ``None`` for ``test_per_class`` means 20 % of each class.

Datasets with an official split (MedMNIST) keep it: :func:`make_official_splits`
subsamples each class within each official split instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from robsal.data.prepared import SPLITS_COLUMNS
from robsal.errors import DataError
from robsal.io import write_text

SPLIT_NAMES = ("train", "val", "test")


def _take(groups: list[list[str]], k: int) -> tuple[list[str], list[list[str]]]:
    """Take exactly ``k`` images from ``groups`` (whole groups first), -> (taken, remaining groups)."""
    taken: list[str] = []
    rest: list[list[str]] = []
    for g in groups:
        if len(taken) + len(g) <= k:
            taken.extend(g)
        else:
            rest.append(g)
    if len(taken) < k and rest:  # trim one lesion; its other views are dropped
        g = rest.pop(0)
        taken.extend(g[: k - len(taken)])
    return taken, rest


def make_splits(
    table: pd.DataFrame,
    classes: list[str],
    *,
    train_per_class: int | None,
    test_per_class: int | None,
    val_per_class: int = 0,
    n_folds: int = 5,
    split_by: str = "lesion",
    seed: int = 0,
    source: str = "the dataset",
) -> pd.DataFrame:
    """Splits of ``table`` (columns image_id, lesion_id, label) -> DataFrame of SPLITS_COLUMNS.

    Raises DataError naming the class when a class has too few images.
    """
    if split_by not in ("lesion", "image"):
        raise DataError(f"data.split_by: {split_by!r} must be 'lesion' or 'image'")
    if test_per_class is not None and val_per_class >= test_per_class:
        raise DataError(
            f"data.val_per_class ({val_per_class}) must be smaller than data.test_per_class "
            f"({test_per_class}): validation images are taken from the test split"
        )
    parts = []
    for ci, label in enumerate(classes):
        sub = table[table["label"] == label].sort_values("image_id")
        n_avail = len(sub)
        n_test = test_per_class if test_per_class is not None else max(1, round(0.2 * n_avail))
        if val_per_class >= n_test:
            raise DataError(
                f"class {label!r}: data.val_per_class ({val_per_class}) must be smaller than its "
                f"{n_test} test images (validation images are taken from the test split)"
            )
        need = n_test + (train_per_class or 0)
        if n_avail < need or n_avail < n_test + n_folds:
            raise DataError(
                f"class {label!r} has {n_avail} images in {source} but the split needs {max(need, n_test + n_folds)} "
                f"(data.train_per_class={train_per_class}, data.test_per_class={test_per_class}); "
                "lower these counts or add images"
            )
        key = sub["lesion_id"] if split_by == "lesion" else sub["image_id"]
        groups = [list(g["image_id"]) for _, g in sub.groupby(key.to_numpy(), sort=True)]
        rng = np.random.default_rng([seed, ci])
        groups = [groups[i] for i in rng.permutation(len(groups))]
        test, rest = _take(groups, n_test)
        test_set = set(test)
        test_groups = [[i for i in g if i in test_set] for g in groups if test_set.intersection(g)]
        val, _ = _take(test_groups, val_per_class) if val_per_class else ([], None)
        val_set = set(val)
        val_lesions = {tuple(g) for g in test_groups if val_set & set(g)}
        test = [i for g in test_groups if tuple(g) not in val_lesions for i in g]  # a trimmed val lesion leaves test
        if train_per_class is None:
            train = [i for g in rest for i in g]
        else:
            train, _ = _take(rest, train_per_class)
        for name, ids in (("train", train), ("val", val), ("test", test)):
            parts.append(pd.DataFrame({"image_id": ids, "split": name}))
    return _with_folds(parts, table, n_folds=n_folds, split_by=split_by, seed=seed)


def _with_folds(parts: list[pd.DataFrame], table: pd.DataFrame, *, n_folds: int, split_by: str, seed: int) -> pd.DataFrame:
    """Chosen (image_id, split) frames -> SPLITS_COLUMNS with CV folds 1..n_folds on the train rows."""
    chosen = pd.concat(parts, ignore_index=True)
    out = chosen.merge(table[["image_id", "lesion_id", "label"]], on="image_id", how="left")
    out["fold"] = pd.array([pd.NA] * len(out), dtype="Int64")
    tr = (out["split"] == "train").to_numpy()
    groups = out.loc[tr, "lesion_id" if split_by == "lesion" else "image_id"].to_numpy()
    labels = out.loc[tr, "label"].to_numpy()
    if int(np.unique(groups).size) < n_folds:
        raise DataError(f"the train split has fewer than data.n_folds={n_folds} lesions; lower data.n_folds")
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**32))
    fold = np.zeros(int(tr.sum()), dtype=np.int64)
    for k, (_, idx) in enumerate(skf.split(np.zeros(len(labels)), labels, groups)):
        fold[idx] = k + 1
    out.loc[tr, "fold"] = fold
    order = {s: i for i, s in enumerate(SPLIT_NAMES)}
    out = out.sort_values(["split", "image_id"], key=lambda c: c.map(order) if c.name == "split" else c)
    return out[SPLITS_COLUMNS].reset_index(drop=True)


def make_official_splits(
    table: pd.DataFrame,
    classes: list[str],
    *,
    train_per_class: int | None,
    test_per_class: int | None,
    val_per_class: int = 0,
    n_folds: int = 5,
    seed: int = 0,
    source: str = "the dataset",
) -> pd.DataFrame:
    """Splits that keep a dataset's own train/val/test membership (``table["official_split"]``).

    Per class (index ``ci`` in ``classes``) and split: the class's images of that official
    split, sorted by image_id, are shuffled with ``numpy.random.default_rng([seed, ci, s])``
    (s = 0 train, 1 val, 2 test) and the first ``k`` are taken, ``k`` = ``train_per_class``,
    ``val_per_class`` or ``test_per_class`` (``None``: all of them; ``val_per_class`` 0: no
    val rows). No image changes split. Train rows get CV folds as in :func:`make_splits`
    (every image is its own group). Raises DataError naming the class and the official
    split when it has fewer images than asked.
    """
    parts = []
    for ci, label in enumerate(classes):
        sub = table[table["label"] == label]
        for si, (name, k) in enumerate((("train", train_per_class), ("val", val_per_class), ("test", test_per_class))):
            pool = np.sort(sub.loc[sub["official_split"] == name, "image_id"].astype(str).to_numpy())
            want = len(pool) if k is None else k
            if len(pool) < want:
                key = f"{name}_per_class"
                raise DataError(
                    f"class {label!r} has {len(pool)} images in the official {name} split of {source} but "
                    f"data.{key}={k}; lower data.{key} ({'0 = no val split' if name == 'val' else 'null = all of them'})"
                )
            if name == "train" and want < n_folds:
                raise DataError(
                    f"class {label!r} would have {want} train images, fewer than data.n_folds={n_folds}; "
                    "lower data.n_folds or raise data.train_per_class"
                )
            rng = np.random.default_rng([seed, ci, si])
            ids = pool[rng.permutation(len(pool))[:want]]
            parts.append(pd.DataFrame({"image_id": ids, "split": name}))
    return _with_folds(parts, table, n_folds=n_folds, split_by="image", seed=seed)


def write_splits(splits: pd.DataFrame, path: str | Path) -> None:
    """Write ``splits.csv`` (columns image_id,lesion_id,label,split,fold; fold empty outside train)."""
    write_text(path, splits[SPLITS_COLUMNS].to_csv(index=False))


def read_splits(path: str | Path) -> pd.DataFrame:
    """Read and validate a ``splits.csv``; raises DataError naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"splits file {path} does not exist; give an existing splits.csv")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the splits CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in SPLITS_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; a splits file has {','.join(SPLITS_COLUMNS)}")
    bad = ~df["split"].isin(SPLIT_NAMES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path} row {i + 2}: split {df['split'].iloc[i]!r} is not train, val or test")
    dup = df["image_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path} row {i + 2}: image_id {df['image_id'].iloc[i]} is listed twice")
    fold = pd.to_numeric(df["fold"].replace("", None), errors="coerce").astype("Int64")
    bad = df["fold"].ne("") & fold.isna()
    bad |= (df["split"] == "train") & fold.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path} row {i + 2}: fold {df['fold'].iloc[i]!r} must be an integer for train rows")
    df["fold"] = fold.where(df["split"] == "train", pd.NA)
    return df[SPLITS_COLUMNS].reset_index(drop=True)


def check_splits(
    splits: pd.DataFrame, table: pd.DataFrame, classes: list[str], source: str, path: str | Path | None = None,
    fix: str = "use the splits file made for this dataset",
) -> None:
    """A reused splits file (``path``, when known) must match the dataset: known ids, same labels,
    known classes. ``fix``: what the one-line DataError tells the user to do."""
    where = f"{path}" if path is not None else "splits"
    known = table.set_index("image_id")["label"]
    missing = ~splits["image_id"].isin(known.index)
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{where} row {i + 2}: image {splits['image_id'].iloc[i]} is not in {source}; {fix}")
    lab = known.loc[splits["image_id"]].to_numpy()
    diff = lab != splits["label"].to_numpy()
    if diff.any():
        i = int(np.flatnonzero(diff)[0])
        raise DataError(
            f"{where} row {i + 2}: image {splits['image_id'].iloc[i]} is labelled {splits['label'].iloc[i]!r} "
            f"but {source} says {lab[i]!r}; {fix}"
        )
    extra = sorted(set(splits["label"]) - set(classes))
    if extra:
        raise DataError(f"{where}: class(es) {', '.join(extra)} not in data.classes ({', '.join(classes)}); {fix}")
