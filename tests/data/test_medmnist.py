"""MedMNIST ``.npz`` files as a data source: class names, official splits, pixels, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robsal.cli import main
from robsal.config import load_config
from robsal.data.check import check_dataset
from robsal.data.medmnist import CLASSES, read_medmnist
from robsal.data.pipeline import prepare
from robsal.errors import DataError

SIZES = {"train": 14, "val": 3, "test": 9}  # images per class in each official split


def medmnist_arrays(n_classes=7, size=28, rgb=True, sizes=SIZES, seed=0):
    """Arrays in MedMNIST's format: class k's images are brighter with k (learnable), labels (N, 1) uint8."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, m in sizes.items():
        labels = np.repeat(np.arange(n_classes), m)
        rng.shuffle(labels)
        shape = (len(labels), size, size, 3) if rgb else (len(labels), size, size)
        base = (labels * (200 // n_classes) + 20).reshape(-1, *([1] * (len(shape) - 1)))
        out[f"{split}_images"] = np.clip(base + rng.integers(-15, 16, shape), 0, 255).astype(np.uint8)
        out[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    return out


def write_npz(path, arrays):
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def derma_rgb(tmp_path):
    return write_npz(tmp_path / "dermamnist_28.npz", medmnist_arrays())


@pytest.fixture
def derma_gray(tmp_path):
    return write_npz(tmp_path / "dermamnist_64.npz", medmnist_arrays(size=20, rgb=False, seed=1))


def tiny_on(path, *extra):
    return load_config("tiny", [f"data.root={path}", "data.source=auto", "device=cpu", *extra])


def test_dermamnist_class_names_follow_the_medmnist_label_order(derma_rgb):
    # medmnist INFO["dermamnist"]["label"]: 0 actinic keratoses, 1 basal cell carcinoma, 2 benign keratosis-like,
    # 3 dermatofibroma, 4 melanoma, 5 melanocytic nevi, 6 vascular lesions
    assert CLASSES["dermamnist"] == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    index = read_medmnist(derma_rgb)
    arrays = np.load(derma_rgb)
    t = index.table
    train = t[t["official_split"] == "train"]
    assert train["image_id"].iloc[4] == "train_000004" and (t["lesion_id"] == t["image_id"]).all()
    assert train["label"].tolist() == [CLASSES["dermamnist"][k] for k in arrays["train_labels"][:, 0]]
    assert t["mask_path"].isna().all() and index.layout == "medmnist"
    assert t.groupby("official_split").size().to_dict() == {"test": 63, "train": 98, "val": 21}


def test_official_membership_kept_and_balanced_per_class(derma_rgb, tmp_path):
    cfg = tiny_on(derma_rgb, "data.classes=[mel,nv,bkl]", "data.train_per_class=7", "data.test_per_class=5",
                  "data.val_per_class=2", "data.n_folds=2")
    data = prepare(cfg, tmp_path / "run", progress=False)
    s = data.splits
    assert (s["image_id"].str.split("_").str[0] == s["split"]).all()  # nobody leaves its official split
    counts = pd.crosstab(s["label"], s["split"])
    assert counts.loc[["mel", "nv", "bkl"], ["train", "val", "test"]].to_numpy().tolist() == [[7, 2, 5]] * 3
    assert set(s.loc[s["split"] == "train", "fold"].astype(int)) == {1, 2}
    # same seed -> same draw; another seed -> another draw from the same pools
    again = prepare(cfg, None, progress=False).splits
    assert again["image_id"].tolist() == s["image_id"].tolist()
    other = prepare(tiny_on(derma_rgb, "data.classes=[mel,nv,bkl]", "data.train_per_class=7", "data.test_per_class=5",
                            "data.val_per_class=2", "data.n_folds=2", "data.seed=3"), None, progress=False).splits
    assert other["image_id"].tolist() != s["image_id"].tolist()
    # null = every image of the class in that official split
    full = prepare(tiny_on(derma_rgb, "data.classes=[mel,nv]", "data.train_per_class=null",
                           "data.test_per_class=null", "data.val_per_class=0", "data.n_folds=2"), None, progress=False)
    assert pd.crosstab(full.splits["label"], full.splits["split"]).to_numpy().tolist() == [[9, 14], [9, 14]]


def test_pixels_rgb_and_grayscale(derma_rgb, derma_gray, tmp_path):
    raw = np.load(derma_rgb)
    data = prepare(tiny_on(derma_rgb, "data.image_size=28"), None, progress=False)
    for r, iid in enumerate(data.image_ids[:5]):
        split, row = iid.split("_")
        np.testing.assert_array_equal(data.images[r], raw[f"{split}_images"][int(row)].transpose(2, 0, 1))
    assert not data.has_mask.any() and data.masks is None
    gray = np.load(derma_gray)
    data = prepare(tiny_on(derma_gray, "data.image_size=16"), None, progress=False)
    for r, iid in enumerate(data.image_ids[:5]):
        split, row = iid.split("_")
        ref = np.asarray(Image.fromarray(gray[f"{split}_images"][int(row)]).resize((16, 16), Image.Resampling.BILINEAR))
        for c in range(3):  # grayscale replicated to the 3 channels
            np.testing.assert_array_equal(data.images[r, c], ref)
    labels = np.array([data.classes[k] for k in data.labels])
    assert (labels == data.splits["label"].to_numpy()).all()


def test_too_few_images_in_an_official_split_names_class_and_split(derma_rgb, tmp_path):
    with pytest.raises(DataError) as err:
        prepare(tiny_on(derma_rgb, "data.train_per_class=15"), tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "'mel'" in msg and "14 images in the official train split" in msg
    assert "data.train_per_class=15" in msg and not (tmp_path / "run" / "splits.csv").exists()


def _bad_files(tmp_path):
    good = medmnist_arrays()
    cases = {}
    cases["missing"] = ({k: v for k, v in good.items() if k != "val_labels"}, "key 'val_labels' is missing")
    lab = dict(good)
    lab["test_labels"] = good["test_labels"].copy()
    lab["test_labels"][3, 0] = 7
    cases["range"] = (lab, "key 'test_labels' has label 7 at row 3, but dermamnist has 7 classes (0..6)")
    vol = dict(good)
    vol["train_images"] = np.zeros((98, 28, 28, 28), np.uint8)
    cases["volume"] = (vol, "key 'train_images' has shape (98, 28, 28, 28), a 3D volume (N, D, H, W)")
    multi = dict(good)
    multi["train_labels"] = np.zeros((98, 14), np.uint8)
    cases["multilabel"] = (multi, "key 'train_labels' has 14 columns, a multi-label set")
    count = dict(good)
    count["val_labels"] = good["val_labels"][:-1]
    cases["count"] = (count, "key 'val_labels' has shape (20, 1) but 'val_images' holds 21 images")
    floats = dict(good)
    floats["test_images"] = good["test_images"].astype(np.float32)
    cases["float"] = (floats, "key 'test_images' is float32, not uint8")
    obj = dict(good)
    obj["train_labels"] = np.array([[1]] * 98, dtype=object)
    cases["pickled"] = (obj, "key 'train_labels' holds Python objects (a pickled array), which robsal never loads")
    out = []
    for name, (arrays, text) in cases.items():
        d = tmp_path / name
        d.mkdir()
        out.append((write_npz(d / "dermamnist_28.npz", arrays), text))
    return out


def test_wrong_files_are_one_line_errors_naming_the_key(tmp_path):
    for path, text in _bad_files(tmp_path):
        with pytest.raises(DataError) as err:
            read_medmnist(path)
        msg = str(err.value)
        assert text in msg and str(path) in msg and "\n" not in msg, (text, msg)
    (tmp_path / "dermamnist.npz").write_bytes(b"PK but not really a zip")
    with pytest.raises(DataError, match=r"not a NumPy \.npz archive"):
        read_medmnist(tmp_path / "dermamnist.npz")
    with pytest.raises(DataError, match="chestmnist is a multi-label set"):
        read_medmnist(write_npz(tmp_path / "chestmnist_64.npz", medmnist_arrays()))
    with pytest.raises(DataError, match=r"names no MedMNIST set robsal knows .* data\.source=medmnist:<set>"):
        read_medmnist(write_npz(tmp_path / "my_skin.npz", medmnist_arrays()))
    # an explicit set name serves a renamed file
    assert read_medmnist(tmp_path / "my_skin.npz", "medmnist:dermamnist").classes == sorted(CLASSES["dermamnist"])


def test_cli_check_and_wrong_file_exit_2(derma_rgb, tmp_path, capsys):
    assert main(["data", "check", "--data", str(derma_rgb), "-c", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "medmnist layout" in out and "official splits: train 98, val 21, test 63" in out
    assert "localisation metrics will be skipped" in out and "problems: none" in out
    path, text = _bad_files(tmp_path)[1]
    assert main(["data", "check", "--data", str(path)]) == 2
    assert text in capsys.readouterr().out
    code = main(["run", "--config", "tiny", "--data", str(path), "--out", str(tmp_path / "r"), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and text in errors[0]
    # data.source=medmnist:<set> is a config value; an unknown source is refused by the config
    assert main(["data", "check", "--data", str(derma_rgb), "--source", "medmnist:dermamnist"]) == 0
    capsys.readouterr()
    assert main(["run", "--config", "tiny", "--set", "data.source=npz", "--out", str(tmp_path / "r2")]) == 2
    assert "data.source" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_main_job_on_dermamnist_reports_the_skipped_localisation_metrics(derma_rgb, tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--config", "tiny", "--data", str(derma_rgb), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--set", "saliency.methods=[gradient,gradcam]"])
    assert code == 0
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert any("no lesion masks" in n and "localisation metrics were skipped" in n for n in summary["notes"])
    per_image = pd.read_csv(out / "metrics" / "per_image.csv")
    metrics = set(per_image["metric"])
    assert not metrics & {"relevance_mass", "relevance_mass_lift", "auroc", "pointing_game", "lesion_area",
                          "relevance_mass_dilated", "border_share"}
    # every metric that needs no mask ran
    assert {"gini", "entropy", "total_variation", "spatial_autocorrelation", "edge_correlation",
            "deletion_auc", "insertion_auc", "max_sensitivity", "cos_input_gradient"} <= metrics
    assert any(m.startswith("sanity_spearman_") for m in metrics)
    assert {v["claim"] for v in summary["verdicts"]} <= {"sharper", "coherent"}  # on_lesion needs masks
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "localisation metrics were skipped" in html and "(no mask)" in html
    splits = pd.read_csv(out / "splits.csv")
    assert set(splits["label"]) == {"mel", "nv", "bkl"}
    assert (splits["image_id"].str.split("_").str[0] == splits["split"]).all()
