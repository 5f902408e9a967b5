"""Lesion-grouped, balanced, stratified, seeded splits and the splits.csv contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robsal.data.prepared import SPLITS_COLUMNS
from robsal.data.splits import check_splits, make_splits, read_splits, write_splits
from robsal.errors import DataError


def table_of(views_per_class: dict[str, list[int]]) -> pd.DataFrame:
    rows, k, i = [], 0, 0
    for label, views in views_per_class.items():
        for v in views:
            for _ in range(v):
                rows.append({"image_id": f"IMG_{i:05d}", "lesion_id": f"L{k:05d}", "label": label})
                i += 1
            k += 1
    return pd.DataFrame(rows)


def _table(seed=0, lesions=60):
    rng = np.random.default_rng(seed)
    return table_of({c: list(rng.choice([1, 1, 1, 2, 3, 4], lesions)) for c in ("mel", "nv", "bkl")})


def test_counts_lesion_grouping_and_folds():
    t = _table()
    s = make_splits(t, ["mel", "nv", "bkl"], train_per_class=40, test_per_class=20, val_per_class=5, n_folds=5)
    assert list(s.columns) == SPLITS_COLUMNS
    n = s.groupby(["split", "label"]).size().unstack()
    assert (n.loc["train"] == 40).all() and (n.loc["val"] == 5).all() and (n.loc["test"] == 15).all()
    assert (s.groupby("lesion_id")["split"].nunique() == 1).all()  # no lesion in two splits
    tr = s[s["split"] == "train"]
    assert (tr.groupby("lesion_id")["fold"].nunique() == 1).all()  # nor in two folds
    assert sorted(tr["fold"].unique()) == [1, 2, 3, 4, 5]
    assert s.loc[s["split"] != "train", "fold"].isna().all()
    per_fold = tr.groupby(["fold", "label"]).size().unstack()
    assert per_fold.to_numpy().min() >= 8 - 3 and per_fold.to_numpy().max() <= 8 + 3  # stratified (40/5 = 8)
    assert s["image_id"].is_unique


def test_seeded():
    t = _table()
    a = make_splits(t, ["mel", "nv"], train_per_class=30, test_per_class=10, seed=1)
    b = make_splits(t, ["mel", "nv"], train_per_class=30, test_per_class=10, seed=1)
    c = make_splits(t, ["mel", "nv"], train_per_class=30, test_per_class=10, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.loc[a["split"] == "test", "image_id"]) != set(c.loc[c["split"] == "test", "image_id"])


def test_split_by_image_reproduces_the_paper_and_lets_lesions_straddle():
    t = table_of({"mel": [4] * 20, "nv": [4] * 20})  # every lesion has 4 views
    s = make_splits(t, ["mel", "nv"], train_per_class=50, test_per_class=20, split_by="image", seed=0)
    assert (s.groupby("lesion_id")["split"].nunique() > 1).any()
    s = make_splits(t, ["mel", "nv"], train_per_class=50, test_per_class=20, split_by="lesion", seed=0)
    assert (s.groupby("lesion_id")["split"].nunique() == 1).all()


@settings(max_examples=25, deadline=None)
@given(
    views=st.lists(st.integers(1, 4), min_size=12, max_size=40),
    n_test=st.integers(3, 10),
    n_val=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
def test_property_never_leaks_and_hits_counts(views, n_test, n_val, seed):
    t = table_of({"a": views, "b": list(reversed(views))})
    n_img = sum(views)
    n_train = (n_img - n_test) // 2
    if n_train < 2:
        return
    s = make_splits(t, ["a", "b"], train_per_class=n_train, test_per_class=n_test, val_per_class=n_val,
                    n_folds=2, seed=seed)
    assert (s.groupby("lesion_id")["split"].nunique() == 1).all()
    tr = s[s["split"] == "train"]
    assert (tr.groupby("lesion_id")["fold"].nunique() == 1).all()
    n = s.groupby(["split", "label"]).size().unstack(fill_value=0).reindex(
        index=["train", "val", "test"], columns=["a", "b"], fill_value=0)
    assert (n.loc["train"] == n_train).all()
    assert (n.loc["val"] == n_val).all()
    # val comes out of the test images; only a trimmed val lesion's other views are dropped
    held_out = n.loc["test"] + n.loc["val"]
    assert (held_out <= n_test).all() and (held_out >= n_test - 3).all()


def test_too_few_images_names_the_class():
    t = table_of({"mel": [1] * 10, "nv": [1] * 30})
    with pytest.raises(DataError, match=r"class 'mel' has 10 images .* needs 25"):
        make_splits(t, ["mel", "nv"], train_per_class=20, test_per_class=5)


def test_val_must_be_smaller_than_test():
    t = table_of({"mel": [1] * 10, "nv": [1] * 10})
    with pytest.raises(DataError, match="val_per_class"):
        make_splits(t, ["mel", "nv"], train_per_class=5, test_per_class=3, val_per_class=3)
    with pytest.raises(DataError, match="class 'mel': data.val_per_class \\(2\\)"):
        make_splits(t, ["mel", "nv"], train_per_class=5, test_per_class=None, val_per_class=2)


def test_all_remaining_when_train_count_is_none():
    t = table_of({"mel": [1] * 10, "nv": [1] * 30})
    s = make_splits(t, ["mel", "nv"], train_per_class=None, test_per_class=4, n_folds=2)
    assert s.groupby(["split", "label"]).size()["train"].to_dict() == {"mel": 6, "nv": 26}


def test_csv_round_trip_and_bad_files(tmp_path):
    s = make_splits(_table(), ["mel", "nv", "bkl"], train_per_class=20, test_per_class=10, val_per_class=2)
    write_splits(s, tmp_path / "splits.csv")
    header = (tmp_path / "splits.csv").read_text().splitlines()[0]
    assert header == "image_id,lesion_id,label,split,fold"
    back = read_splits(tmp_path / "splits.csv")
    pd.testing.assert_frame_equal(back, s, check_dtype=False)
    assert str(back["fold"].dtype) == "Int64"

    (tmp_path / "a.csv").write_text("image_id,label,split\nx,mel,train\n")
    with pytest.raises(DataError, match="missing column.*lesion_id.*fold"):
        read_splits(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image_id,lesion_id,label,split,fold\nx,l,mel,training,1\n")
    with pytest.raises(DataError, match="b.csv row 2: split 'training'"):
        read_splits(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("image_id,lesion_id,label,split,fold\nx,l,mel,train,\n")
    with pytest.raises(DataError, match="c.csv row 2: fold"):
        read_splits(tmp_path / "c.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_splits(tmp_path / "nope.csv")


def test_reused_splits_must_match_the_dataset():
    t = _table()
    s = make_splits(t, ["mel", "nv", "bkl"], train_per_class=20, test_per_class=10)
    check_splits(s, t, ["mel", "nv", "bkl"], "here")
    other = s.copy()
    other.loc[3, "image_id"] = "IMG_99999"
    with pytest.raises(DataError, match="row 5: image IMG_99999 is not in here"):
        check_splits(other, t, ["mel", "nv", "bkl"], "here")
    other = s.copy()
    other.loc[0, "label"] = "nv" if other.loc[0, "label"] != "nv" else "mel"
    with pytest.raises(DataError, match="row 2: image .* is labelled"):
        check_splits(other, t, ["mel", "nv", "bkl"], "here")
