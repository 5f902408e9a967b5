"""The built-in generator: determinism, balance, lesions per id, masks that match the drawing."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from robsal.data.synthetic import (
    ARTIFACTS, CLASSES, CUES, METADATA_NAME, SynthSettings, generate, plan, render, sample_lesion,
)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synth.json":  # synth.json records the wall time
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    s = SynthSettings(n=9, size=32, seed=3)
    a = _digest(generate(tmp_path / "a", s, progress=False))
    b = _digest(generate(tmp_path / "b", s, progress=False))
    c = _digest(generate(tmp_path / "c", SynthSettings(n=9, size=32, seed=4), progress=False))
    assert a == b
    assert a != c


def test_layout_is_ham10000_and_masks_match_images(tmp_path):
    root = generate(tmp_path / "s", SynthSettings(n=12, size=36, seed=1, hair_rate=1.0), progress=False)
    md = pd.read_csv(root / METADATA_NAME, dtype=str)
    assert list(md.columns[:7]) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert md["image_id"].str.fullmatch(r"ISIC_\d{7}").all()
    for iid in md["image_id"]:
        im = Image.open(root / "images" / f"{iid}.jpg")
        assert im.size == (48, 36) and im.mode == "RGB"  # 4:3 like HAM10000's 600x450
        m = np.asarray(Image.open(root / "masks" / f"{iid}_segmentation.png"))
        assert m.shape == (36, 48) and set(np.unique(m)) <= {0, 255} and (m > 0).sum() > 20
        assert (root / "masks" / f"{iid}_hair.png").exists()  # hair_rate = 1
    assert (md["hair"] == "1").all()


def test_plan_balances_classes_and_groups_views_by_lesion():
    rows = plan(SynthSettings(n=100, seed=0, multi_view_rate=0.5))
    df = pd.DataFrame(rows)
    assert df["dx"].value_counts().to_dict() == {"mel": 34, "nv": 33, "bkl": 33}
    views = df.groupby("lesion_id").size()
    assert views.max() >= 2 and (views == 1).any()  # some lesions have several images
    assert (df.groupby("lesion_id")["dx"].nunique() == 1).all()  # a lesion has one class
    assert df["image_id"].is_unique


def test_presets_have_enough_images_per_class():
    from robsal.config import load_config

    for preset in ("tiny", "quick"):
        d = load_config(preset).data
        counts = pd.Series([r["dx"] for r in plan(SynthSettings.from_config(d.synth))]).value_counts()
        assert counts.min() >= d.train_per_class + d.test_per_class, preset


@pytest.mark.parametrize("label", CLASSES)
def test_lesion_mask_is_where_the_lesion_was_drawn(label):
    for i in range(4):
        les = sample_lesion(np.random.default_rng([1, i]), label, 0.5)
        s = render(les, np.random.default_rng([2, i]), 48)  # no artifacts
        diff = np.abs(s.image / 255.0 - s.skin).max(-1)  # change made by drawing the lesion
        inner = ndimage.binary_erosion(s.mask, iterations=2)
        outer = ~ndimage.binary_dilation(s.mask, iterations=2)
        assert diff[inner].mean() > 0.1
        assert diff[outer].mean() < 0.01
        assert (diff[s.mask] > 0.03).mean() > 0.9
        # with a flat colour (no variegation/dots) the border (alpha = 0.5) is exactly
        # where the change is half the lesion's contrast, whatever the class's shape
        flat = dataclasses.replace(les, cues={**les.cues, "variegation": 0.0, "bluegrey": 0.0, "milia": 0.0,
                                              "waxy": 0.0, "network": 0.0, "darkness": 0.8})
        s = render(flat, np.random.default_rng([2, i]), 48)
        diff = np.abs(s.image / 255.0 - s.skin).max(-1)
        drawn = diff > 0.5 * np.median(diff[ndimage.binary_erosion(s.mask, iterations=2)])
        iou = (drawn & s.mask).sum() / (drawn | s.mask).sum()
        assert iou > 0.85, (label, i, iou)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_artifact_mask_covers_exactly_what_the_artifact_changed(name):
    les = sample_lesion(np.random.default_rng(0), "nv", 0.5)
    clean = render(les, np.random.default_rng(7), 64)
    art = render(les, np.random.default_rng(7), 64, (name,))
    changed = np.abs(art.image.astype(int) - clean.image.astype(int)).max(-1) > 8
    m = art.artifacts[name]
    assert m.sum() > 10
    assert (changed & m).sum() / m.sum() > 0.5
    # outside the mask only soft edges change (bubble rims/highlights, vignette's gradual fall-off)
    assert (changed & ~ndimage.binary_dilation(m, iterations=3)).sum() / changed.sum() < 0.2
    np.testing.assert_array_equal(art.mask, clean.mask)


def test_spurious_ruler_knob_puts_rulers_only_on_melanoma():
    df = pd.DataFrame(plan(SynthSettings(n=90, seed=0, spurious_ruler_mel=1.0)))
    ruler = df["artifacts"].map(lambda a: "ruler" in a)
    assert ruler[df["dx"] == "mel"].all() and not ruler[df["dx"] != "mel"].any()
    df = pd.DataFrame(plan(SynthSettings(n=300, seed=0, ruler_rate=0.3)))
    rate = df.assign(r=df["artifacts"].map(lambda a: "ruler" in a)).groupby("dx")["r"].mean()
    assert rate.between(0.15, 0.45).all()  # class-independent without the knob


def test_difficulty_makes_classes_overlap():
    def accuracy(d):
        X, y = [], []
        for k, label in enumerate(CLASSES):
            for i in range(60):
                les = sample_lesion(np.random.default_rng([5, k, i]), label, d)
                X.append([les.cues[c] for c in CUES])
                y.append(k)
        return cross_val_score(LogisticRegression(max_iter=500), np.array(X), y, cv=3).mean()

    easy, hard = accuracy(0.0), accuracy(1.0)
    assert easy > 0.97
    assert hard < easy - 0.05
    assert hard > 0.5  # still learnable


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    from robsal.errors import DataError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already holds files"):
        generate(tmp_path / "x", SynthSettings(n=3, size=16), progress=False)
    with pytest.raises(DataError, match="not a synthetic dataset"):
        generate(tmp_path / "x", SynthSettings(n=3, size=16), progress=False, overwrite=True)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_preview_grid_outlines_the_lesions(tmp_path):
    from robsal.data.preview import save_preview

    root = generate(tmp_path / "s", SynthSettings(n=6, size=32, seed=0), progress=False)
    png = save_preview(root, tmp_path / "grid.png", per_class=2)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    green = (img[..., 1] > 200) & (img[..., 0] < 60) & (img[..., 2] < 60)
    assert green.sum() > 50  # mask outlines drawn


def test_force_replaces_only_the_generators_own_files(tmp_path):
    import json

    from robsal.data.synthetic import SynthSettings, generate

    out = tmp_path / "synth"
    generate(out, SynthSettings(n=6, size=32, seed=0), progress=False)
    manifest = json.loads((out / "synth.json").read_text())["files"]
    assert "HAM10000_metadata.csv" in manifest and "synth.json" in manifest
    assert sorted(manifest) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    (out / "notes.txt").write_text("mine")
    (out / "images" / "my_photo.jpg").write_bytes(b"not robsal's")
    generate(out, SynthSettings(n=4, size=32, seed=1), overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "my_photo.jpg").read_bytes() == b"not robsal's"
    new = json.loads((out / "synth.json").read_text())
    assert new["settings"]["n"] == 4 and len(list((out / "images").glob("*.jpg"))) == 4 + 1  # old images gone
    leftovers = [p for p in tmp_path.iterdir() if p.name != "synth"]
    assert leftovers == []  # no temporary folder left beside it


def test_generated_dataset_folder_has_the_usual_permissions(tmp_path):
    import os
    import stat

    from robsal.data.synthetic import SynthSettings, generate

    out = generate(tmp_path / "s", SynthSettings(n=3, size=16), progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
