"""Perceptual alignment of a map with the image, and the two control "explanations".

- :func:`cos_input_gradient`: |cos(x, grad_x logit_y)| (Etmann et al. 2019), the
  alignment of the raw input gradient with the image. Robust models are expected to
  align more. Computed in [0, 1] pixel space (the model normalises inside), so the
  normalisation shift enters; Etmann et al. worked on normalised inputs of bias-free
  nets, where it equals |logit| / (||x|| ||g||). Only meaningful for the gradient, so
  :mod:`robsal.metrics.per_image` reports it under the ``gradient`` method only.
- :func:`edge_correlation`: Spearman rank correlation of a map with the Sobel edge
  magnitude of the grayscale image. An explanation that only traces edges scores high;
  the controls below tell us what "high" means.
- Controls, scored like methods (``control_sobel``, ``control_gaussian``): a map that is
  the image's Sobel edge magnitude, and a centred isotropic Gaussian (sigma = side / 4)
  that knows nothing about the image. A robust model's saliency should beat the edge
  detector on localisation, and a centred blob sets the bar that large, centred lesions
  make easy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from skimage.filters import sobel


def grayscale(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W), the plain mean over RGB."""
    return np.asarray(images, dtype=np.float64).mean(axis=1)


def sobel_map(images: np.ndarray) -> np.ndarray:
    """Sobel edge magnitude of each grayscale image, (N, 3, H, W) -> (N, H, W) >= 0.

    ``skimage.filters.sobel``: sqrt((Gx^2 + Gy^2) / 2) with reflect padding.
    """
    gray = grayscale(images)
    return np.stack([sobel(g) for g in gray]).astype(np.float64)


def gaussian_map(n: int, height: int, width: int, sigma_frac: float = 0.25) -> np.ndarray:
    """A centred isotropic Gaussian, sigma = sigma_frac * min(H, W), repeated n times: (n, H, W)."""
    sigma = sigma_frac * min(height, width)
    yy = np.arange(height) - (height - 1) / 2.0
    xx = np.arange(width) - (width - 1) / 2.0
    g = np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma**2))
    return np.broadcast_to(g, (n, height, width)).copy()


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho between matching rows of (N, P) arrays (average ranks for ties); NaN if constant."""
    ra = np.apply_along_axis(rankdata, 1, a)
    rb = np.apply_along_axis(rankdata, 1, b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    out = np.full(a.shape[0], np.nan)
    ok = den > 0
    out[ok] = (ra * rb).sum(1)[ok] / den[ok]
    return out


def spearman_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho between maps a[i] and b[i], both (N, H, W): (N,) in [-1, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return _spearman_rows(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))


def edge_correlation(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Spearman rho between each map (N, H, W) and the Sobel magnitude of its image (N, 3, H, W)."""
    return spearman_maps(maps, sobel_map(images))


def input_gradient(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d logit_target / d x, signed, (N, 3, H, W), for images in [0, 1] on the model's device."""
    x = images.detach().clone().requires_grad_(True)
    logits = model(x)  # (N, K)
    sel = logits.gather(1, targets.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(sel, x)
    return grad.detach()


def cos_input_gradient(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|cos(x, g)| over the flattened (3*H*W) vectors, in [0, 1] (Etmann et al. 2019): (N,)."""
    g = input_gradient(model, images, targets).flatten(1).double()  # (N, 3HW)
    x = images.detach().flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(x, g, dim=1, eps=1e-30)
    return cos.abs().cpu().numpy()
