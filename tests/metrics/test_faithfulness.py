"""Deletion / insertion curves on models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robsal.metrics import faithfulness as F


class QuadrantModel(nn.Module):
    """logit_0 = 40 * (mean of the top-left quadrant - 0.5), logit_1 = 0."""

    def forward(self, x):  # (N, 3, H, W) -> (N, 2)
        h, w = x.shape[-2:]
        q = x[:, :, : h // 2, : w // 2].mean(dim=(1, 2, 3))
        return torch.stack([40 * (q - 0.5), torch.zeros_like(q)], dim=1)


class ConstantModel(nn.Module):
    def forward(self, x):
        return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)


def _images(n=2, s=8):
    x = torch.zeros(n, 3, s, s)
    x[:, :, : s // 2, : s // 2] = 1.0
    return x


def test_step_masks_remove_round_k_p_over_steps_top_pixels():
    order = np.array([3, 0, 2, 1])  # most relevant first
    m = F._step_masks(order, 4, 4, (2, 2)).reshape(5, 4)
    assert m.sum(1).tolist() == [0, 1, 2, 3, 4]
    assert m[1].tolist() == [False, False, False, True]
    assert m[2].tolist() == [True, False, False, True]


def test_constant_model_gives_flat_curves():
    x = _images()
    maps = np.random.default_rng(0).random((2, 8, 8))
    curves = F.perturbation_curves(ConstantModel(), x, torch.tensor([0, 1]), maps, steps=4, fill="mean")
    p0 = 1 / (1 + np.exp(-1.0))
    s = F.faithfulness_scores(curves)
    np.testing.assert_allclose(s["deletion_auc"], [p0, 1 - p0])
    np.testing.assert_allclose(s["insertion_auc"], [p0, 1 - p0])
    np.testing.assert_allclose(s["deletion_gap"], 0.0, atol=1e-12)


def test_faithful_map_beats_anti_map():
    x = _images()
    t = torch.tensor([0, 0])
    good = np.zeros((2, 8, 8))
    good[:, :4, :4] = 1.0
    good += np.linspace(0, 0.01, 64).reshape(8, 8)  # break ties
    anti = good.max() - good
    model = QuadrantModel()
    s_good = F.faithfulness_scores(F.perturbation_curves(model, x, t, good, steps=8, fill="mean"))
    s_anti = F.faithfulness_scores(F.perturbation_curves(model, x, t, anti, steps=8, fill="mean"))
    assert (s_good["deletion_auc"] < s_anti["deletion_auc"] - 0.3).all()
    assert (s_good["insertion_auc"] > s_anti["insertion_auc"] + 0.3).all()
    assert (s_good["deletion_gap"] > 0.5).all()
    # closed form: MoRF deletes the quadrant (16 of 64 px) in the first 2 of 8 steps;
    # with the mean fill (0.25): after step 1, q = (8 * 1 + 8 * 0.25) / 16 = 0.625, then 0.25;
    # p(target) = sigmoid(40 * (q - 0.5))
    curves = F.perturbation_curves(model, x, t, good, steps=8, fill="mean")
    q = np.array([1.0, 0.625, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(curves["deletion"][0], 1 / (1 + np.exp(-40 * (q - 0.5))), rtol=1e-5)


def test_batch_size_does_not_change_curves_and_blur_fill():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(3, 3, 12, 12)
    t = torch.tensor([0, 1, 2])
    maps = np.random.default_rng(0).random((3, 12, 12))
    a = F.perturbation_curves(model, x, t, maps, steps=5, batch_size=1)
    b = F.perturbation_curves(model, x, t, maps, steps=5, batch_size=1000)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    # endpoints: nothing deleted = the clean probability; everything deleted = the fill's
    clean = torch.softmax(model(x), 1)[torch.arange(3), t].detach().numpy()
    fill = torch.softmax(model(F.fill_image(x, "blur")), 1)[torch.arange(3), t].detach().numpy()
    np.testing.assert_allclose(a["deletion"][:, 0], clean, rtol=1e-5)
    np.testing.assert_allclose(a["deletion"][:, -1], fill, rtol=1e-5)
    np.testing.assert_allclose(a["insertion"][:, 0], fill, rtol=1e-5)
    with pytest.raises(ValueError):
        F.fill_image(x, "black")
