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
from robsal.rundir import init_run


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


@pytest.mark.parametrize("content, encoding, expect", [
    ("lesion_id,image_id,dx_type\nL1,ISIC_1,histo\n", "utf-8", "missing column(s) dx"),
    ("lesion_id;image_id;dx\nL1;ISIC_1;mel\n", "utf-8", "uses ';' as separator"),
    ("lesion_id,image_id,dx,localization\nL1,ISIC_1,mel,\u00e9paule\n", "latin-1", "not UTF-8"),
])
def test_a_metadata_csv_that_does_not_qualify_says_why(tmp_path, content, encoding, expect):
    from robsal.data.pipeline import read_dataset
    from robsal.errors import DataError

    root = tmp_path / "ham"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "HAM10000_metadata.csv").write_bytes(content.encode(encoding))
    with pytest.raises(DataError) as exc:
        read_dataset(root)
    assert expect in str(exc.value) and "class 'mel'" not in str(exc.value)


def test_images_and_masks_folders_without_metadata_are_not_classes(tmp_path):
    from robsal.data.pipeline import read_dataset
    from robsal.errors import DataError

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    with pytest.raises(DataError, match="no metadata CSV"):
        read_dataset(tmp_path)


def test_a_stray_csv_beside_class_folders_keeps_the_folder_layout(tmp_path):
    from robsal.data.pipeline import detect_layout

    (tmp_path / "mel").mkdir()
    (tmp_path / "notes.csv").write_text("when,what\n2026,scanned\n")
    assert detect_layout(tmp_path) == "folder"


def test_an_oversized_metadata_csv_is_refused_before_reading(tmp_path, monkeypatch):
    from robsal.data import ham10000
    from robsal.data.pipeline import read_dataset
    from robsal.errors import DataError

    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n" + "L,ISIC_1,mel\n" * 100)
    monkeypatch.setattr(ham10000, "MAX_METADATA_BYTES", 100)
    with pytest.raises(DataError, match="more than the 100"):
        read_dataset(root)
