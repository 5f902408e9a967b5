"""Localisation metrics: known answers and agreement with Quantus."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from robsal.metrics import localisation as L


def _disc(n: int, size: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    m = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2
    return np.repeat(m[None], n, axis=0)


def test_map_equal_to_mask_scores_perfectly():
    masks = _disc(3, 16, 5)
    maps = masks.astype(np.float64)
    assert np.allclose(L.relevance_mass(maps, masks), 1.0)
    assert np.allclose(L.pointing_game(maps, masks), 1.0)
    assert np.allclose(L.auroc(maps, masks), 1.0)
    assert np.allclose(L.relevance_rank(maps, masks), 1.0)
    area = masks[0].mean()
    assert np.allclose(L.lesion_area(masks), area)
    assert np.allclose(L.relevance_mass_lift(maps, masks), 1.0 / area)


def test_uniform_map_scores_chance():
    masks = _disc(2, 16, 6)
    maps = np.ones((2, 16, 16))
    assert np.allclose(L.relevance_mass(maps, masks), L.lesion_area(masks))
    assert np.allclose(L.relevance_mass_lift(maps, masks), 1.0)
    # a flat map ranks nothing: rank-based scores are undefined, not "raster order"
    for fn in (L.auroc, L.pointing_game, L.relevance_rank):
        assert np.isnan(fn(maps, masks)).all()
        assert np.isnan(fn(maps * 0.4 + 1e-9 * np.random.default_rng(0).random(maps.shape), masks)).all()
    half = maps.copy()
    half[:, :, :8] = 0.5  # two levels: AUROC is defined again
    assert np.isfinite(L.auroc(half, masks)).all()


def test_inverted_map_scores_zero():
    masks = _disc(1, 16, 5)
    maps = (~masks).astype(float)
    assert L.relevance_mass(maps, masks)[0] == 0.0
    assert L.pointing_game(maps, masks)[0] == 0.0
    assert L.auroc(maps, masks)[0] == 0.0


def test_undefined_cases_are_nan_not_numbers():
    maps = np.random.default_rng(0).random((2, 8, 8))
    masks = np.zeros((2, 8, 8), bool)
    masks[1] = True  # full mask: AUROC undefined, mass defined (= 1)
    assert np.isnan(L.relevance_mass(maps, masks)[0])
    assert np.isnan(L.pointing_game(maps, masks)[0])
    assert np.isnan(L.auroc(maps, masks)).all()
    assert L.relevance_mass(maps, masks)[1] == pytest.approx(1.0)
    assert np.isnan(L.relevance_mass(np.zeros((1, 8, 8)), masks[1:]))[0]


def test_agrees_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(1)
    n, s = 6, 14
    maps = rng.random((n, s, s))
    masks = rng.random((n, s, s)) > 0.55
    x = rng.random((n, 3, s, s))
    y = np.zeros(n, dtype=int)
    kw = dict(abs=True, normalise=False, disable_warnings=True, display_progressbar=False)
    pairs = {
        "relevance_mass": quantus.RelevanceMassAccuracy,
        "relevance_rank": quantus.RelevanceRankAccuracy,
        "pointing_game": quantus.PointingGame,
        "auroc": quantus.AUC,
    }
    for name, cls in pairs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cls(**kw)(
                model=None, x_batch=x, y_batch=y, a_batch=maps[:, None].copy(),
                s_batch=masks[:, None].astype(float), channel_first=True,
            )
        ours = L.LOCALISATION_METRICS[name](maps, masks)
        np.testing.assert_allclose(ours, np.asarray(ref, dtype=float), atol=1e-6, err_msg=name)
    # the pointing game: a max outside the mask is a miss in both
    masks2 = np.zeros((1, s, s), bool)
    masks2[0, :3, :3] = True
    m2 = np.zeros((1, s, s))
    m2[0, -1, -1] = 1.0
    assert L.pointing_game(m2, masks2)[0] == 0.0


def test_relevance_rank_counts_top_k():
    # 4x4, mask = 4 pixels; the top-4 of the map hit 3 of them -> 0.75
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, :4] = True
    m = np.zeros((1, 4, 4))
    m[0, 0, :3] = [9, 8, 7]
    m[0, 3, 3] = 6
    assert L.relevance_rank(m, mask)[0] == pytest.approx(0.75)
