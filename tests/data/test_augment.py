"""Augmentation: torchvision as the oracle for each operation, masks moved with their images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from robsal.config import AugmentConfig
from robsal.data.augment import AugmentParams, Augmenter, colour_jitter, geometric


def _params(n, angle=0.0, hflip=False, vflip=False, b=1.0, c=1.0, s=1.0):
    full = lambda v, dt=torch.float64: torch.full((n,), v, dtype=dt)  # noqa: E731
    return AugmentParams(full(angle), full(hflip, torch.bool), full(vflip, torch.bool), full(b), full(c), full(s))


def test_colour_jitter_matches_torchvision_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 10, 10, generator=g)
    b = torch.tensor([0.8, 1.0, 1.2, 0.9])
    c = torch.tensor([1.2, 0.8, 1.0, 1.1])
    s = torch.tensor([0.8, 1.2, 1.1, 1.0])
    out = colour_jitter(x, b, c, s)
    for i in range(4):
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b[i].item()), c[i].item()), s[i].item())
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("angle", [90.0, -90.0, 180.0])
def test_right_angles_and_flips_are_exact(angle):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    k = int(angle // 90) % 4
    torch.testing.assert_close(geometric(x, _params(2, angle)), torch.rot90(x, k, (2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(geometric(x, _params(2, hflip=True)), x.flip(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(geometric(x, _params(2, vflip=True)), x.flip(2), atol=1e-6, rtol=0)


def test_rotation_matches_torchvision_rotate():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for angle in (17.0, -43.0):
        ours = geometric(x, _params(1, angle))
        ref = TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR)
        inner = (slice(None), slice(None), slice(6, 26), slice(6, 26))  # away from the zero-filled corners
        torch.testing.assert_close(ours[inner], ref[inner], atol=2e-3, rtol=0)


def test_masks_follow_their_images():
    aug = Augmenter(dataclasses.replace(AugmentConfig(), brightness=0.0, contrast=0.0, saturation=0.0))
    m = torch.zeros(6, 24, 24)
    m[:, 4:14, 6:18] = 1  # off-centre block
    x = m.unsqueeze(1).repeat(1, 3, 1, 1)
    xa, ma = aug.apply(x, m, generator=torch.Generator().manual_seed(3))
    assert ma.shape == m.shape and set(ma.unique().tolist()) <= {0.0, 1.0}
    agree = ((xa[:, 0] > 0.5) == (ma > 0.5)).float().mean()
    assert agree > 0.97
    assert not torch.equal(ma, m)  # it did move


def test_random_draws_cover_the_configured_ranges_and_are_seeded():
    aug = Augmenter(AugmentConfig())
    p = aug.sample(20000, torch.Generator().manual_seed(0))
    assert p.angle.abs().max() <= 60 and p.angle.abs().max() > 55  # 50 + 10 degrees
    assert 0.45 < p.hflip.float().mean() < 0.55 and 0.45 < p.vflip.float().mean() < 0.55
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.8 and f.max() <= 1.2 and abs(f.mean() - 1) < 0.01
    x = torch.rand(5, 3, 16, 16)
    a = aug(x, torch.Generator().manual_seed(4))
    b = aug(x, torch.Generator().manual_seed(4))
    c = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    # per sample: the same image in a batch gets different transforms
    y = aug(x[:1].repeat(4, 1, 1, 1), torch.Generator().manual_seed(6))
    assert not torch.allclose(y[0], y[1])


def test_disabled_is_identity_and_options_turn_pieces_off():
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(Augmenter(AugmentConfig(enabled=False))(x), x)
    none = AugmentConfig(hflip=False, vflip=False, brightness=0, contrast=0, saturation=0,
                         affine_degrees=0, rotation_degrees=0)
    torch.testing.assert_close(Augmenter(none)(x), x, atol=1e-6, rtol=0)
