"""Channel reduction and normalisation (Appendix B): closed forms, caps, degenerate maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robsal.saliency import normalize_map, reduce_channels, to_display


def test_reduce_channels_paper_vs_captum():
    a = np.zeros((1, 3, 2, 2), dtype=np.float32)
    a[0, :, 0, 0] = [1.0, -1.0, 2.0]
    a[0, :, 1, 1] = [-3.0, 0.5, 0.5]
    paper = reduce_channels(a, "paper")
    captum = reduce_channels(torch.from_numpy(a), "captum")
    assert paper.shape == (1, 2, 2) and paper.dtype == np.float32
    assert paper[0, 0, 0] == 4.0 and captum[0, 0, 0] == 2.0  # sum |a| vs |sum a|
    assert paper[0, 1, 1] == 4.0 and captum[0, 1, 1] == 2.0
    assert paper[0, 0, 1] == 0.0
    shared = np.repeat(np.abs(a[:, :1]), 3, axis=1)
    np.testing.assert_array_equal(reduce_channels(shared, "paper", channel_shared=True), np.abs(a[:, 0]))


def test_paper_normalisation_caps_at_the_99th_percentile():
    m = np.arange(1000, dtype=np.float64).reshape(25, 40)  # values 0..999
    out = normalize_map(m)
    p99 = np.percentile(m, 99)  # 989.01
    assert out.dtype == np.float32 and out.shape == m.shape
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, np.clip(m / p99, 0, 1), rtol=1e-6)
    assert (out == 1.0).sum() == 10  # the top 1 % is capped
    assert abs(out.ravel()[500] - 500 / p99) < 1e-6


def test_a_single_outlier_does_not_wash_out_the_map():
    rng = np.random.default_rng(0)
    m = rng.random((50, 50))
    m[0, 0] = 1e6  # one exploding gradient
    out = normalize_map(m)
    assert out[0, 0] == 1.0
    assert out.mean() > 0.4  # without the cap everything would be ~1e-6


def test_min_is_subtracted_as_smilkov():
    m = np.full((10, 10), 5.0)
    m[:5] = 7.0
    m[0, 0] = 9.0
    out = normalize_map(m)
    assert out.min() == 0.0  # the floor of 5 maps to 0
    np.testing.assert_allclose(out[5:], 0.0)


@pytest.mark.parametrize("mode", ["paper", "captum"])
def test_constant_and_zero_maps_do_not_divide_by_zero(mode):
    with np.errstate(all="raise"):
        zero = normalize_map(np.zeros((8, 8)), mode)
        const = normalize_map(np.full((3, 8, 8), 0.25), mode)
    np.testing.assert_array_equal(zero, 0.0)
    expected = 0.0 if mode == "paper" else 1.0  # paper: no spread; captum: m / cap
    np.testing.assert_array_equal(const, expected)


@pytest.mark.parametrize("mode", ["paper", "captum"])
def test_tiny_magnitudes_do_not_render_blank(mode):
    rng = np.random.default_rng(1)
    m = rng.random((2, 16, 16))
    ref = normalize_map(m, mode)
    for scale in (1e-8, 1e-20, 1e-30):
        out = normalize_map(m * scale, mode)
        assert out.max() == 1.0
        np.testing.assert_allclose(out, ref, atol=1e-5)
    assert ref.std() > 0.1


def test_captum_cumulative_mass_threshold():
    m = np.array([[1.0, 1.0, 1.0, 97.0]])  # 99 % of the mass (99) is reached only at 97
    np.testing.assert_allclose(normalize_map(m, "captum"), [[1 / 97, 1 / 97, 1 / 97, 1.0]], rtol=1e-6)
    m = np.arange(1, 101, dtype=np.float64).reshape(10, 10)  # total 5050, 99 % = 4999.5
    # 1 + ... + 99 = 4950 < 4999.5, so the running sum reaches 99 % only at 100: cap = 100
    np.testing.assert_allclose(normalize_map(m, "captum"), m / 100.0, rtol=1e-6)
    m = np.arange(1, 101, dtype=np.float64).reshape(10, 10)
    np.testing.assert_allclose(normalize_map(m, "captum", percentile=90), np.clip(m / 95.0, 0, 1), rtol=1e-6)


def test_captum_threshold_agrees_with_captum():
    from captum.attr._utils.visualization import _cumulative_sum_threshold

    rng = np.random.default_rng(2)
    m = rng.exponential(size=(20, 20))
    cap = _cumulative_sum_threshold(m, 99)
    np.testing.assert_allclose(normalize_map(m, "captum"), np.clip(m / cap, 0, 1), rtol=1e-6)


def test_joint_normalisation_keeps_ratios_across_maps():
    rng = np.random.default_rng(3)
    a = rng.random((16, 16))
    out = normalize_map(np.stack([a, 0.25 * a]), joint=True)
    per = normalize_map(np.stack([a, 0.25 * a]))
    np.testing.assert_allclose(per[0], per[1], atol=1e-6)  # per map: the scale is gone
    assert out[1].max() < 0.3 < out[0].max()  # joint: the weaker map stays weaker


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (3, 6, 7), elements=st.floats(0, 1e6, allow_nan=False, allow_subnormal=False)),
    st.sampled_from(["paper", "captum"]),
)
def test_normalised_maps_lie_in_unit_interval(m, mode):
    out = normalize_map(m, mode)
    assert out.shape == m.shape and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    if mode == "paper":
        for k in range(3):
            if np.ptp(m[k]) > 0:
                assert out[k].max() == 1.0  # the 99th percentile and above reach 1


def test_to_display_and_nan_rejected():
    a = torch.randn(2, 3, 8, 8)
    out = to_display(a)
    assert out.shape == (2, 8, 8) and 0 <= out.min() and out.max() == 1.0
    with pytest.raises(ValueError, match="NaN"):
        normalize_map(np.full((4, 4), np.nan))
