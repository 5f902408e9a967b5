"""Sharpness / coherence metrics: closed forms, direct loops, Quantus."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from robsal.metrics import complexity as C


def test_constant_map_gini_zero_entropy_max():
    maps = np.full((2, 8, 8), 0.3)
    assert np.allclose(C.gini(maps), 0.0, atol=1e-12)
    assert np.allclose(C.entropy(maps), np.log(64))
    assert np.allclose(C.total_variation(maps), 0.0)
    assert np.isnan(C.spatial_autocorrelation(maps)).all()  # undefined for a constant map


def test_delta_map_gini_near_one_entropy_zero():
    maps = np.zeros((1, 10, 10))
    maps[0, 4, 7] = 2.5
    assert C.gini(maps)[0] == pytest.approx(1 - 1 / 100)
    assert C.entropy(maps)[0] == pytest.approx(0.0, abs=1e-12)


def test_gini_known_small_vector_and_scale_invariance():
    # textbook Gini of (0, 0, 1, 3) = sum_i (2i - n - 1) a_i / (n sum) = (1*1 + 3*3) / (4*4) = 0.625
    m = np.array([[[0.0, 3.0], [1.0, 0.0]]])
    assert C.gini(m)[0] == pytest.approx(0.625)
    assert C.gini(m * 17.0)[0] == pytest.approx(0.625)


def test_total_variation_direct_loop_and_checkerboard():
    rng = np.random.default_rng(0)
    m = rng.random((1, 5, 7))
    mm = m[0] / m[0].max()
    diffs = []
    for i in range(5):
        for j in range(7):
            if i + 1 < 5:
                diffs.append(abs(mm[i + 1, j] - mm[i, j]))
            if j + 1 < 7:
                diffs.append(abs(mm[i, j + 1] - mm[i, j]))
    assert C.total_variation(m)[0] == pytest.approx(np.mean(diffs))
    board = (np.indices((6, 6)).sum(0) % 2).astype(float)[None]
    assert C.total_variation(board)[0] == pytest.approx(1.0)


def test_spatial_autocorrelation_direct_and_extremes():
    rng = np.random.default_rng(0)
    m = rng.random((1, 6, 5))[0]
    pairs = []
    for i in range(6):
        for j in range(5):
            if i + 1 < 6:
                pairs += [(m[i, j], m[i + 1, j]), (m[i + 1, j], m[i, j])]
            if j + 1 < 5:
                pairs += [(m[i, j], m[i, j + 1]), (m[i, j + 1], m[i, j])]
    a, b = np.array(pairs).T
    assert C.spatial_autocorrelation(m[None])[0] == pytest.approx(np.corrcoef(a, b)[0, 1])
    board = (np.indices((6, 6)).sum(0) % 2).astype(float)[None]
    assert C.spatial_autocorrelation(board)[0] == pytest.approx(-1.0)
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 50.0)[None]
    noise = rng.random((1, 32, 32))
    assert C.spatial_autocorrelation(blob)[0] > 0.95
    assert abs(C.spatial_autocorrelation(noise)[0]) < 0.1


def test_gini_and_entropy_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(2)
    maps = rng.random((5, 12, 12)) ** 3
    maps /= maps.reshape(5, -1).max(1)[:, None, None]  # scaled to max 1 (see module docstring)
    x = rng.random((5, 3, 12, 12))
    y = np.zeros(5, dtype=int)
    kw = dict(abs=True, normalise=False, disable_warnings=True, display_progressbar=False)
    for name, cls in (("gini", quantus.Sparseness), ("entropy", quantus.Complexity)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cls(**kw)(model=None, x_batch=x, y_batch=y, a_batch=maps[:, None].copy(), channel_first=True)
        np.testing.assert_allclose(C.COMPLEXITY_METRICS[name](maps), ref, atol=1e-6, err_msg=name)


def test_sharper_map_scores_sharper():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :24]
    blob = np.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / 18.0)
    diffuse = blob * 0.2 + rng.random((24, 24))
    assert C.gini(blob[None])[0] > C.gini(diffuse[None])[0]
    assert C.entropy(blob[None])[0] < C.entropy(diffuse[None])[0]
    assert C.total_variation(blob[None])[0] < C.total_variation(diffuse[None])[0]


def test_float_rounding_is_not_structure():
    m = np.full((1, 8, 8), 0.7, dtype=np.float32) + np.random.default_rng(0).normal(scale=1e-9, size=(1, 8, 8))
    assert np.isnan(C.spatial_autocorrelation(m))[0]
    assert C.gini(m)[0] == pytest.approx(0.0, abs=1e-6)
