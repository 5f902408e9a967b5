"""Alignment metrics and the control explanations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy.stats import spearmanr

from robsal.metrics import alignment as A


def test_sobel_control_equals_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 20, 20))
    gray = x.mean(1)
    direct = np.stack([np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1)) for g in gray])
    # skimage's Sobel = sqrt((gx^2 + gy^2) / 2) with kernels divided by 4
    np.testing.assert_allclose(A.sobel_map(x), direct / (4 * np.sqrt(2)), atol=1e-12)
    np.testing.assert_allclose(A.edge_correlation(direct, x), 1.0)


def test_gaussian_control_is_centred_with_given_sigma():
    g = A.gaussian_map(2, 17, 17)
    assert g.shape == (2, 17, 17)
    assert np.unravel_index(g[0].argmax(), (17, 17)) == (8, 8)
    sigma = 0.25 * 17
    # value at distance 4 px from the centre
    assert g[0, 8, 12] == pytest.approx(np.exp(-16 / (2 * sigma**2)))
    np.testing.assert_allclose(g[0], g[0].T)


def test_spearman_maps_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 6, 6)), rng.random((4, 6, 6))
    b[0] = a[0] ** 2  # monotone -> 1
    b[1] = np.round(b[1], 1)  # ties
    ours = A.spearman_maps(a, b)
    ref = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours[0] == pytest.approx(1.0)


def test_cos_input_gradient_linear_model_closed_form():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3 * 4 * 4, 2, bias=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    x = torch.rand(3, 3, 4, 4)
    t = torch.tensor([0, 1, 1])
    got = A.cos_input_gradient(model, x, t)
    w = lin.weight.detach().numpy()
    xf = x.flatten(1).numpy()
    ref = [abs(xf[i] @ w[t[i]]) / (np.linalg.norm(xf[i]) * np.linalg.norm(w[t[i]])) for i in range(3)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # an image proportional to its gradient is perfectly aligned
    x2 = torch.from_numpy(np.abs(w[0])).view(1, 3, 4, 4).float()
    model2 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2, bias=False))
    model2[1].weight.data[0] = x2.flatten()
    assert A.cos_input_gradient(model2, x2, torch.tensor([0]))[0] == pytest.approx(1.0, abs=1e-6)
