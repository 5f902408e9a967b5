"""Training augmentation of Appendix A, per sample, batched, on any device.

Appendix A: horizontal and vertical flips, brightness/contrast/saturation jitter
0.2, a random affine transformation of 10 deg and a random rotation of up to
50 deg. We follow torchvision's semantics for each piece:

* flips with probability 0.5 each;
* colour factors drawn uniformly from [1 - j, 1 + j] and applied like
  ``torchvision.transforms.v2.functional.adjust_brightness/contrast/saturation``
  (brightness scales, contrast blends with the mean grey level, saturation blends
  with the grey image; results clamped to [0, 1]);
* ``RandomAffine(10)`` and ``RandomRotation(50)`` are both rotations about the
  centre (torchvision's RandomAffine with only ``degrees`` is a rotation), so the
  two compose into one rotation by ``U(-50, 50) + U(-10, 10)`` degrees, applied
  with one ``F.affine_grid``/``F.grid_sample`` call (bilinear; zero fill, the
  torchvision default).

Deviations: torchvision's ``ColorJitter`` applies the three colour operations in
a random order; we use the fixed order brightness, contrast, saturation. The
colour jitter comes before the geometry, so the zero-filled corners stay black
as they do when torchvision's geometric transforms come last.

Masks (lesion or artifact masks) get the same flips and rotation with
nearest-neighbour sampling and no colour change (:meth:`Augmenter.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robsal.config import AugmentConfig

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale


@dataclass
class AugmentParams:
    """Per-sample random parameters (CPU tensors of length B)."""

    angle: torch.Tensor  # degrees, counter-clockwise
    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    brightness: torch.Tensor  # factors around 1
    contrast: torch.Tensor
    saturation: torch.Tensor


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luminance with torchvision's weights."""
    w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour_jitter(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation with per-sample factors (B,); x (B, 3, H, W) in [0, 1]."""
    view = (-1, 1, 1, 1)
    b, c, s = (t.to(x.device, x.dtype).view(view) for t in (b, c, s))
    x = (x * b).clamp(0, 1)
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)  # (B,1,1,1)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    x = (s * x + (1 - s) * grey(x)).clamp(0, 1)
    return x


def geometric(x: torch.Tensor, p: AugmentParams, mode: str = "bilinear") -> torch.Tensor:
    """Flip and rotate each sample of x (B, C, H, W) about its centre."""
    n = x.shape[0]
    a = torch.deg2rad(p.angle.to(torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    sx = torch.where(p.hflip, -1.0, 1.0).to(torch.float64)
    sy = torch.where(p.vflip, -1.0, 1.0).to(torch.float64)
    # output (u, v) -> input: flip(rot(u, v)); affine_grid maps output to input coordinates
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = sx * cos, -sx * sin
    theta[:, 1, 0], theta[:, 1, 1] = sy * sin, sy * cos
    theta = theta.to(x.device, x.dtype if x.is_floating_point() else torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


class Augmenter:
    """Random per-sample augmentation of float batches (B, 3, H, W) in [0, 1].

    ``aug(images, generator=None) -> images``; ``aug.apply(images, masks, generator)``
    transforms masks (B, H, W) or (B, K, H, W) consistently. With
    ``cfg.enabled = False`` both return their inputs unchanged.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        c = self.cfg

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

        angle = u(-c.rotation_degrees, c.rotation_degrees) + u(-c.affine_degrees, c.affine_degrees)
        hflip = torch.rand(n, generator=generator) < (0.5 if c.hflip else 0.0)
        vflip = torch.rand(n, generator=generator) < (0.5 if c.vflip else 0.0)
        return AugmentParams(
            angle=angle, hflip=hflip, vflip=vflip,
            brightness=u(1 - c.brightness, 1 + c.brightness),
            contrast=u(1 - c.contrast, 1 + c.contrast),
            saturation=u(1 - c.saturation, 1 + c.saturation),
        )

    def transform(self, images: torch.Tensor, p: AugmentParams, masks: torch.Tensor | None = None):
        """Apply given parameters: images (B,3,H,W), masks (B,H,W)|(B,K,H,W)|None -> (images, masks)."""
        x = colour_jitter(images, p.brightness, p.contrast, p.saturation)
        if self._rotates() or bool(p.hflip.any()) or bool(p.vflip.any()):
            x = geometric(x, p, "bilinear")
        if masks is None:
            return x, None
        m = masks.unsqueeze(1) if masks.dim() == 3 else masks  # (B,H,W) -> (B,1,H,W)
        mt = geometric(m.to(torch.float32), p, "nearest").round().to(masks.dtype)
        return x, (mt.squeeze(1) if masks.dim() == 3 else mt)

    def _rotates(self) -> bool:
        return self.cfg.rotation_degrees > 0 or self.cfg.affine_degrees > 0

    def apply(self, images: torch.Tensor, masks: torch.Tensor | None = None,
              generator: torch.Generator | None = None):
        """(images, masks) augmented with the same random draw; masks may be None."""
        if not self.cfg.enabled:
            return images, masks
        return self.transform(images, self.sample(images.shape[0], generator), masks)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, None, generator)[0]
