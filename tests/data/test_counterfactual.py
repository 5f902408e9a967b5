"""Counterfactual renders: the same synthetic image with one artifact removed or added."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from robsal.data.counterfactual import SynthSource, jpeg_roundtrip, model_input, model_mask
from robsal.data.synthetic import ARTIFACTS, SynthSettings, generate, plan, read_settings
from robsal.errors import DataError

SETTINGS = SynthSettings(n=30, size=64, seed=1, hair_rate=0.5, ruler_rate=0.5, vignette_rate=0.5, bubble_rate=0.5)


@pytest.fixture(scope="module")
def source():
    return SynthSource(SETTINGS)


def _blocks(changed: np.ndarray, grow: int) -> np.ndarray:
    """Pixels of the 16x16 JPEG coding blocks that touch ``changed``, grown by ``grow`` blocks."""
    h, w = changed.shape
    blk = np.zeros(((h + 15) // 16, (w + 15) // 16), bool)
    ys, xs = np.nonzero(changed)
    blk[ys // 16, xs // 16] = True
    if grow:
        blk = binary_dilation(blk, np.ones((2 * grow + 1, 2 * grow + 1), bool))
    return np.kron(blk, np.ones((16, 16), bool))[:h, :w]


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_pairs_identical_outside_the_artifact(source, artifact):
    kinds = set()
    for row in source.rows[:12]:
        p = source.pair(row["image_id"], artifact)
        kinds.add(p.carried)
        differ = np.any(p.with_artifact != p.without, axis=-1)
        assert differ.any(), "the artifact was not painted"
        assert not (differ & ~p.changed).any()  # raw arrays: identical outside the footprint, bit for bit
        if artifact in ("ruler", "hair"):
            assert not (p.changed & ~p.mask).any()  # ... which lies inside the artifact's mask
            assert not (differ & ~p.mask).any()
        else:  # a faint fringe around bubbles and the vignette's mask; the mask itself is changed
            assert (p.mask & ~p.changed).sum() <= 0.01 * p.mask.sum()
        # saved as JPEG (as the dataset is): identical outside the coding blocks touching the footprint
        # and their neighbours (chroma upsampling reaches one pixel into them)
        a, b = jpeg_roundtrip(p.with_artifact), jpeg_roundtrip(p.without)
        jdiff = np.any(a != b, axis=-1)
        assert not (jdiff & ~_blocks(p.changed, 1)).any()
        assert jdiff.any()
    assert kinds == {True, False}, "both removed and added artifacts must be covered"


def test_removing_keeps_the_rest_of_the_image(source):
    """The other artifacts and the lesion stay: removing one artifact equals the pair's 'without'."""
    row = next(r for r in source.rows if len(r["artifacts"]) >= 2)
    first, second = row["artifacts"][0], row["artifacts"][1]
    s = source.render(row["image_id"], hide=(first,))
    assert second in s.artifacts and first in s.changed
    full = source.render(row["image_id"])
    np.testing.assert_array_equal(s.mask, full.mask)
    np.testing.assert_array_equal(s.artifacts[second], full.artifacts[second])
    np.testing.assert_array_equal(source.pair(row["image_id"], first).without, s.image)


def test_renders_reproduce_the_written_dataset(tmp_path):
    root = generate(tmp_path / "d", SETTINGS, progress=False)
    src = SynthSource.from_folder(root)
    from robsal.data.cache import image_rgb, load_image, load_mask

    for row in src.rows[:10]:
        iid = row["image_id"]
        path = root / "images" / f"{iid}.jpg"
        assert np.array_equal(jpeg_roundtrip(src.render(iid).image), image_rgb(path))
        # the model's view: as the data stage loads the file
        want, wh = load_image(path, 32)
        assert np.array_equal(model_input(src.render(iid).image, 32), want)
        for a in row["artifacts"]:
            p = src.pair(iid, a)
            assert p.carried and np.array_equal(p.with_artifact, src.render(iid).image)
            got = model_mask(p.mask, 32)
            assert np.array_equal(got, load_mask(root / "masks" / f"{iid}_{a}.png", 32, wh))


def test_planted_shortcut_in_the_plan():
    base = SynthSettings(n=300, size=32, seed=2)
    for artifact, cls in (("ruler", "mel"), ("vignette", "bkl")):
        rows = plan(replace(base, planted_artifact=artifact, planted_class=cls, planted_rate=0.9))
        on = [artifact in r["artifacts"] for r in rows if r["dx"] == cls]
        assert not any(artifact in r["artifacts"] for r in rows if r["dx"] != cls)
        assert 0.8 < np.mean(on) < 0.97
        rows0 = plan(replace(base, planted_artifact=artifact, planted_class=cls, planted_rate=0.0))
        assert not any(artifact in r["artifacts"] for r in rows0)
        # every other artifact is drawn as without the shortcut
        plain = plan(base)
        for r, q in zip(rows0, plain):
            assert [a for a in r["artifacts"] if a != artifact] == [a for a in q["artifacts"] if a != artifact]
    # spurious_ruler_mel is the planted ruler with mel
    a = plan(replace(base, spurious_ruler_mel=0.6))
    b = plan(replace(base, planted_artifact="ruler", planted_class="mel", planted_rate=0.6))
    assert [r["artifacts"] for r in a] == [r["artifacts"] for r in b]


def test_settings_written_only_when_planted(tmp_path):
    assert "planted_artifact" not in SETTINGS.to_dict()
    planted = replace(SETTINGS, n=6, planted_artifact="hair", planted_class="nv", planted_rate=0.5)
    root = generate(tmp_path / "p", planted, progress=False)
    assert read_settings(root)["settings"]["planted_class"] == "nv"
    assert SynthSource.from_folder(root).settings == planted


@pytest.mark.parametrize("bad", [dict(planted_artifact="tattoo", planted_class="mel", planted_rate=0.5),
                                 dict(planted_artifact="ruler", planted_class="scc", planted_rate=0.5),
                                 dict(planted_artifact="ruler", planted_class="mel", planted_rate=1.5),
                                 dict(planted_artifact="ruler", planted_class="mel", planted_rate=0.5,
                                      spurious_ruler_mel=0.5),
                                 dict(planted_class="mel")])
def test_bad_planted_settings(bad):
    with pytest.raises(DataError):
        plan(replace(SynthSettings(n=6, size=16), **bad))


def test_unknown_artifact_and_image(source):
    with pytest.raises(DataError, match="unknown artifact"):
        source.pair(source.rows[0]["image_id"], "tattoo")
    with pytest.raises(DataError, match="not in this synthetic dataset"):
        source.pair("ISIC_9999999", "ruler")
