"""prepare / load_run_data on the built-in synthetic data: the run-directory contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robsal.config import load_config
from robsal.data import Augmenter, PreparedData, load_run_data, prepare
from robsal.data.prepared import SPLITS_COLUMNS
from robsal.data.splits import read_splits
from robsal.errors import DataError
from robsal.runs import init_run


@pytest.fixture
def tiny_run(tmp_path):
    cfg = load_config("tiny", ["device=cpu"])
    run = init_run(cfg, tmp_path / "run")
    return cfg, run


def test_prepare_tiny_writes_splits_and_reloads(tiny_run):
    cfg, run = tiny_run
    data = prepare(cfg, run, progress=False)
    assert isinstance(data, PreparedData)
    d = cfg.data
    assert data.images.shape[1:] == (3, d.image_size, d.image_size)
    counts = data.splits.groupby(["split", "label"]).size().unstack()
    assert (counts.loc["train"] == d.train_per_class).all()
    assert (counts.loc["val"] == d.val_per_class).all()
    assert (counts.loc["test"] + counts.loc["val"] <= d.test_per_class).all()
    assert (run / "data" / "HAM10000_metadata.csv").exists()
    csv = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == SPLITS_COLUMNS
    assert (csv.loc[csv["split"] != "train", "fold"] == "").all()
    assert set(csv.loc[csv["split"] == "train", "fold"]) == {"1", "2"}
    assert data.has_mask.all() and set(data.artifact_masks) == {"hair", "ruler", "vignette", "bubble"}
    assert [data.classes[i] for i in data.labels] == data.splits["label"].tolist()
    again = load_run_data(run)
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(data.images))
    pd.testing.assert_frame_equal(again.splits, data.splits)
    x, y = data.batch(data.indices("train")[:4])
    assert str(x.dtype) == "torch.float32" and 0 <= float(x.min()) and float(x.max()) <= 1  # [0, 1], no normalisation
    assert Augmenter(cfg.augment)(x).shape == x.shape


def test_lesions_are_darker_than_skin_inside_their_masks(tiny_run):
    cfg, run = tiny_run
    data = prepare(cfg, run, progress=False)
    grey = np.asarray(data.images, dtype=float).mean(1)  # (N, S, S)
    m = data.masks.astype(bool)
    inside = np.array([g[k].mean() for g, k in zip(grey, m)])
    outside = np.array([g[~k].mean() for g, k in zip(grey, m)])
    assert (inside < outside).mean() > 0.9


def test_existing_splits_are_reused_and_can_be_passed_to_another_run(tiny_run, tmp_path):
    cfg, run = tiny_run
    first = prepare(cfg, run, progress=False)
    # another seed would make other splits, but RUN/splits.csv wins
    cfg2 = load_config("tiny", ["data.seed=7"])
    same = prepare(cfg2, run, progress=False)
    pd.testing.assert_frame_equal(same.splits, first.splits)
    # --splits FILE for a new run
    cfg3 = load_config("tiny", ["data.seed=7", f"data.splits={run / 'splits.csv'}"])
    other = prepare(cfg3, tmp_path / "run2", progress=False)
    pd.testing.assert_frame_equal(other.splits, first.splits)
    pd.testing.assert_frame_equal(read_splits(tmp_path / "run2" / "splits.csv"), first.splits)
    fresh = prepare(cfg2, tmp_path / "run3", progress=False)
    assert not fresh.splits.equals(first.splits)  # data.seed matters when nothing is reused


def test_synthetic_data_follows_its_settings(tmp_path):
    cfg = load_config("tiny", ["data.synth.n=60", "data.train_per_class=10", "data.test_per_class=6"])
    a = prepare(cfg, tmp_path / "run", progress=False)
    assert len(pd.read_csv(tmp_path / "run" / "data" / "HAM10000_metadata.csv")) == 60
    (tmp_path / "run" / "splits.csv").unlink()
    cfg = load_config("tiny", ["data.synth.n=66", "data.train_per_class=10", "data.test_per_class=6"])
    prepare(cfg, tmp_path / "run", progress=False)
    assert len(pd.read_csv(tmp_path / "run" / "data" / "HAM10000_metadata.csv")) == 66
    b = prepare(load_config("tiny", ["data.synth.n=60", "data.train_per_class=10", "data.test_per_class=6"]),
                None, progress=False)  # no run dir: generated into the cache
    assert len(b) == len(a)


def test_sources_that_need_a_folder_say_so():
    with pytest.raises(DataError, match="--data DIR"):
        prepare(load_config("tiny", ["data.source=ham10000"]), None, progress=False)


def test_a_metadata_csv_with_a_header_and_no_rows_is_an_error(tmp_path, capsys):
    from robsal.cli import main

    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n")
    assert main(["data", "check", "--data", str(root)]) == 2
    out = capsys.readouterr().out  # data check lists its problems, one line each
    assert "dataset is empty (its metadata CSV lists no images)" in out and "Traceback" not in out
