"""Boundary-aware localisation (secondary metrics): closed-form values and a brute-force oracle.

The oracle computes every pixel's squared Euclidean distance to the mask and to the outside
with explicit numpy formulas over all pixel pairs, independent of the implementation's
distance transform.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from robsal.metrics import localisation as L
from robsal.metrics import per_image as P
from robsal.metrics import stats
from robsal.metrics import summary as R
from robsal.metrics.inputs import ExplainedImages

H = W = 40
C = (19.0, 20.0)  # disc centre (row, col), on pixel centres


def _radius() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.sqrt((yy - C[0]) ** 2 + (xx - C[1]) ** 2)  # (H, W) distance to the centre


def _disc(r: float) -> np.ndarray:
    return _radius() <= r  # (H, W) bool


def _ring(r1: float, r2: float) -> np.ndarray:
    rad = _radius()
    return ((rad >= r1) & (rad <= r2)).astype(np.float64)  # (H, W) value 1 on the annulus


def _oracle(mask: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """(dilated, band) of one (H, W) mask by brute force over all pixel pairs."""
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    p = np.stack([yy.ravel(), xx.ravel()], 1)  # (P, 2) pixel centres
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)  # (P, P) squared distances
    m = mask.ravel()
    to_mask = d2[:, m].min(1) if m.any() else np.full(len(p), np.inf)
    to_out = d2[:, ~m].min(1) if (~m).any() else np.full(len(p), np.inf)  # outside the image: unknown
    dilated = to_mask <= t * t
    eroded = m & (to_out > t * t)
    return dilated.reshape(mask.shape), (dilated & ~eroded).reshape(mask.shape)


def _share(ring: np.ndarray, region: np.ndarray) -> float:
    return float((ring * region).sum() / ring.sum())


R0, T = 10.0, 3.0


def test_ring_inside_the_mask_is_fully_in_dilated_and_not_on_border():
    mask, ring = _disc(R0)[None], _ring(2, 5)[None]  # 5 + 3 < 10: farther than t from the outside
    assert L.relevance_mass_dilated(ring, mask, T)[0] == 1.0
    assert L.border_share(ring, mask, T)[0] == 0.0


def test_ring_entirely_outside_the_dilated_mask_scores_zero():
    # any pixel at radius > R0 + t is farther than t from every mask pixel (triangle inequality)
    mask, ring = _disc(R0)[None], _ring(R0 + T + 0.5, R0 + T + 4)[None]
    assert L.relevance_mass_dilated(ring, mask, T)[0] == 0.0
    assert L.border_share(ring, mask, T)[0] == 0.0
    assert L.relevance_mass(ring, mask)[0] == 0.0


def test_ring_just_outside_the_mask_is_inside_the_dilation():
    # radius in (R0, R0 + 1]: the nearest mask pixel on the ray is <= 1 + sqrt(2)/2 < 3 px away
    mask, ring = _disc(R0)[None], _ring(R0 + 0.01, R0 + 1)[None]
    assert ring.sum() > 0
    assert L.relevance_mass(ring, mask)[0] == 0.0
    assert L.relevance_mass_dilated(ring, mask, T)[0] == 1.0
    assert L.border_share(ring, mask, T)[0] == 1.0  # outside the mask, within t: on the band


@pytest.mark.parametrize(("r1", "r2", "t"), [(8, 14, 3.0), (11, 16, 3.0), (6, 12, 2.5), (9, 15, L.tolerance_px(64))])
def test_split_ring_gives_ratio_of_pixel_counts(r1, r2, t):
    mask, ring = _disc(R0), _ring(r1, r2)
    dilated, band = _oracle(mask, t)
    exp_dil, exp_band = _share(ring, dilated), _share(ring, band)
    assert 0 < exp_dil < 1 or 0 < exp_band < 1  # the case is really split
    assert L.relevance_mass_dilated(ring[None], mask[None], t)[0] == pytest.approx(exp_dil, abs=1e-12)
    assert L.border_share(ring[None], mask[None], t)[0] == pytest.approx(exp_band, abs=1e-12)
    assert L.border_area(mask[None], t)[0] == pytest.approx(band.mean(), abs=1e-12)


def test_irregular_masks_agree_with_brute_force():
    rng = np.random.default_rng(3)
    n, s = 5, 18
    maps = rng.random((n, s, s))
    masks = rng.random((n, s, s)) > 0.6
    masks[0] = False
    masks[0, :6, :7] = True  # touches the image corner: the image edge is not the lesion's edge
    for t in (1.0, 1.5, 2.0, 4.29):
        dil = np.stack([_oracle(m, t)[0] for m in masks])
        band = np.stack([_oracle(m, t)[1] for m in masks])
        assert np.array_equal(L.dilate(masks, t), dil)
        assert np.array_equal(L.border_band(masks, t), band)
        exp = (maps * dil).sum((1, 2)) / maps.sum((1, 2))
        assert np.allclose(L.relevance_mass_dilated(maps, masks, t), exp, rtol=0, atol=1e-12)
        exp_b = (maps * band).sum((1, 2)) / maps.sum((1, 2))
        assert np.allclose(L.border_share(maps, masks, t), exp_b, rtol=0, atol=1e-12)
        assert np.allclose(L.border_area(masks, t), band.mean((1, 2)))


def test_uniform_map_on_border_scores_its_area():
    masks = _disc(R0)[None]
    assert L.border_share(np.ones((1, H, W)), masks, T)[0] == pytest.approx(L.border_area(masks, T)[0])


def test_tolerance_zero_is_plain_relevance_mass():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16))
    masks = rng.random((4, 16, 16)) > 0.5
    masks[1] = True
    assert np.array_equal(L.relevance_mass_dilated(maps, masks, 0), L.relevance_mass(maps, masks))
    # below 1 px no pixel centre is within reach of the other side: the band is empty, NaN
    assert np.isnan(L.border_share(maps, masks, 0.9)).all()
    assert np.isnan(L.border_area(masks, 0)).all()


def test_undefined_cases_are_nan():
    maps = np.random.default_rng(1).random((3, 12, 12))
    masks = np.zeros((3, 12, 12), bool)
    masks[1, 3:8, 3:8] = True
    masks[2] = True  # full mask: dilated mass 1, no boundary
    for fn in (L.relevance_mass_dilated, L.border_share):
        assert np.isnan(fn(maps, masks, 2.0)[0])  # empty mask
        assert np.isnan(fn(np.zeros((3, 12, 12)), masks, 2.0)).all()  # all-zero map
    assert np.isnan(L.border_area(masks, 2.0)[[0, 2]]).all()
    assert L.relevance_mass_dilated(maps, masks, 2.0)[2] == pytest.approx(1.0)
    assert np.isnan(L.border_share(maps, masks, 2.0)[2])
    assert np.isfinite(L.border_share(maps, masks, 2.0)[1])
    with pytest.raises(ValueError, match="tolerance"):
        L.relevance_mass_dilated(maps, masks, -1)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        L.border_share(maps[0], masks[0], 2.0)


def test_tolerance_px_scales_zhang_15_px_at_224():
    assert L.tolerance_px(224) == 15
    assert L.tolerance_px(64) == 15 * 64 / 224
    assert L.tolerance_px(448) == 30
    assert L.tolerance_px(64, reference_px=10, reference_size=128) == 5
    with pytest.raises(ValueError):
        L.tolerance_px(0)


def test_secondary_metrics_are_in_no_claim_and_chance_level_is_not_compared():
    claimed = {m for _, parts in stats.CLAIMS.values() for m, _ in parts}
    assert set(R.SECONDARY) == {"relevance_mass_dilated", "border_share"}
    assert set(R.SECONDARY) <= set(L.SECONDARY_LOCALISATION_METRICS)
    assert not (set(L.SECONDARY_LOCALISATION_METRICS) & claimed)
    # as summarise filters: the secondary metrics are compared, their chance level is not
    names = pd.Series(list(L.SECONDARY_LOCALISATION_METRICS))
    compared = set(names[~names.str.startswith(R.NOT_COMPARED)])
    assert compared == set(R.SECONDARY)


def test_secondary_metrics_never_enter_a_verdict():
    # strongly significant secondary differences, no primary metric: no verdict at all
    pairs = [stats.Paired("robust", "standard", "gradient", m, 50, 0.3, 0.2, 0.4, 1e-9, 1e-9) for m in R.SECONDARY]
    assert stats.verdicts(pairs) == []
    # beside a primary metric: the verdict lines name only the claim's metrics
    pairs.append(stats.Paired("robust", "standard", "gradient", "relevance_mass", 50, 0.1, 0.05, 0.2, 1e-4, 1e-4))
    (v,) = stats.verdicts(pairs)
    assert v["claim"] == "on_lesion" and not any(m in v["line"] for m in R.SECONDARY)


def test_map_metrics_records_secondary_metrics_at_scaled_tolerance():
    rng = np.random.default_rng(2)
    n, s = 4, 32
    maps = rng.random((n, s, s))
    masks = np.repeat((np.hypot(*(np.mgrid[:s, :s] - 15.5)) < 8)[None], n, 0)
    has_mask = np.array([True, True, False, True])
    ids = np.array([f"i{k}" for k in range(n)])
    images = ExplainedImages(ids, torch.from_numpy(rng.random((n, 3, s, s))), masks, has_mask, {}, [], {})
    rec = P.PerImageRecords()
    P.map_metrics(rec, "m", "gradient", maps, images)
    df = rec.frame().set_index(["metric", "image_id"])["value"]
    tol = 15 * s / 224
    sel = has_mask
    for name in ("relevance_mass_dilated", "border_share", "border_area"):
        assert set(df[name].index) == set(ids[sel])
    assert np.allclose(df["relevance_mass_dilated"].loc[ids[sel]], L.relevance_mass_dilated(maps[sel], masks[sel], tol))
    assert np.allclose(df["border_share"].loc[ids[sel]], L.border_share(maps[sel], masks[sel], tol))
    assert np.allclose(df["border_area"].loc[ids[sel]], L.border_area(masks[sel], tol))
