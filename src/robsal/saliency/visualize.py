"""From attributions to displayable saliency maps (paper Appendix B, first paragraph).

Two steps, each with the paper's text as the default and the original code's
Captum-based behaviour as an option:

1. **Channel reduction** (N, C, H, W) -> (N, H, W)

   * ``paper``: "the saliency of one pixel is the sum of the absolute values of each
     RGB channel": sum_c |a_c|;
   * ``captum``: |sum_c a_c| (what ``captum.attr.visualization`` does with
     ``sign='absolute_value'``; opposite-signed channels cancel).

   For channel-shared methods (Grad-CAM and occlusion: one value per pixel repeated
   over C) both take the single channel's |value|, so the map is not multiplied by C.

2. **Normalisation** of each (H, W) map to [0, 1]

   * ``paper``: "cap the extreme value to the 99th percentile, rescale to [0, 1]",
     as Smilkov et al.'s code does: ``clip((m - min) / (p99 - min), 0, 1)``;
   * ``captum``: Captum's cumulative-mass threshold: sort the values, take the value
     where the running sum first reaches 99 % of the total mass as the cap, and show
     ``clip(m / cap, 0, 1)``.

   Both are written here in float64 rather than calling Captum's private helpers:
   robust models have tiny gradients (1e-6 and below), and Captum's helper treats a
   scale under 1e-5 as "nothing to show" and renders a blank map. Here the result
   does not depend on the magnitude at all (``normalize_map(c * m) == normalize_map(m)``
   for c > 0). Nothing divides by zero: in ``paper`` mode a map without spread
   (constant or all zero) becomes all zeros; in ``captum`` mode an all-zero map stays
   zero and a constant positive map becomes all ones (Captum's behaviour).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from matplotlib import colormaps

from robsal.errors import ConfigError

Reduction = Literal["paper", "captum"]
Normalisation = Literal["paper", "captum"]


def reduce_channels(
    attributions: torch.Tensor | np.ndarray, mode: Reduction = "paper", *, channel_shared: bool = False
) -> np.ndarray:
    """(N, C, H, W) attributions -> (N, H, W) float32 non-negative per-pixel saliency."""
    a = attributions.detach().cpu().numpy() if isinstance(attributions, torch.Tensor) else np.asarray(attributions)
    if a.ndim != 4:
        raise ValueError(f"attributions must be (N, C, H, W), got shape {a.shape}")
    a = a.astype(np.float64)
    if channel_shared:
        out = np.abs(a[:, 0])
    elif mode == "paper":
        out = np.abs(a).sum(axis=1)
    elif mode == "captum":
        out = np.abs(a.sum(axis=1))
    else:
        raise ConfigError(f"unknown channel reduction {mode!r}; use 'paper' or 'captum'")
    return out.astype(np.float32)


def _cumulative_mass_cap(values: np.ndarray, mass: float) -> float:
    """Smallest sorted value at which the running sum reaches ``mass`` of the total."""
    v = np.sort(values.ravel())
    c = np.cumsum(v)
    if c[-1] <= 0:
        return 0.0
    return float(v[int(np.searchsorted(c, c[-1] * mass, side="left"))])


def normalize_map(
    maps: np.ndarray | torch.Tensor,
    mode: Normalisation = "paper",
    *,
    percentile: float = 99.0,
    joint: bool = False,
) -> np.ndarray:
    """Scale non-negative saliency maps to [0, 1] (float32, same shape).

    ``maps``: (H, W) or (N, H, W). Each map is scaled on its own unless ``joint``, when
    one scale is computed over all of them (a consistent scale across a figure row).
    ``percentile``: 99 for the paper's 99th-percentile cap, and the share of mass for
    ``captum``. A map without spread (constant, all zero) becomes all zeros.
    """
    m = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if m.ndim not in (2, 3):
        raise ValueError(f"maps must be (H, W) or (N, H, W), got shape {m.shape}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError("saliency map holds NaN or inf values")
    single = m.ndim == 2
    stack = m[None] if single else m
    out = np.zeros_like(stack)
    groups = [np.arange(len(stack))] if joint else [[i] for i in range(len(stack))]
    for idx in groups:
        block = stack[idx]
        if mode == "paper":
            lo = float(block.min())
            hi = float(np.percentile(block, percentile))
            span = hi - lo
            if span > 0:
                out[idx] = np.clip((block - lo) / span, 0.0, 1.0)
            # else: constant map -> zeros (no spread to show, and no division by zero)
        elif mode == "captum":
            cap = _cumulative_mass_cap(np.abs(block), percentile / 100.0)
            if cap > 0:
                out[idx] = np.clip(np.abs(block) / cap, 0.0, 1.0)
        else:
            raise ConfigError(f"unknown normalisation {mode!r}; use 'paper' or 'captum'")
    out = out.astype(np.float32)
    return out[0] if single else out


def to_display(
    attributions: torch.Tensor | np.ndarray,
    mode: Reduction = "paper",
    *,
    channel_shared: bool = False,
    percentile: float = 99.0,
) -> np.ndarray:
    """Both steps with the same mode: (N, C, H, W) attributions -> (N, H, W) in [0, 1]."""
    return normalize_map(
        reduce_channels(attributions, mode, channel_shared=channel_shared), mode, percentile=percentile
    )


def heatmap_rgb(norm_map: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) float RGB of a single-colour-scale heat map."""
    return colormaps[cmap](np.clip(norm_map, 0, 1))[..., :3]


def overlay(image: np.ndarray, norm_map: np.ndarray, *, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """Blend a heat map over an image (H, W, 3) in [0, 1]; the map's weight grows with
    its value so that unimportant pixels show the image."""
    heat = heatmap_rgb(norm_map, cmap)
    w = alpha * np.clip(norm_map, 0, 1)[..., None]
    return np.clip((1 - w) * image + w * heat, 0, 1)


def image_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] or uint8 -> (H, W, 3) float in [0, 1] for display."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    return np.clip(np.transpose(a, (1, 2, 0)), 0, 1)
