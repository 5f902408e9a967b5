"""Stability of explanations: across training seeds, and under small input noise.

- Seeds (paper Appendix C.2, Figure 10: "saliency methods are brittle to training
  noise"): for models of a run that differ only in their seed (same eps), the maps of
  the same images are compared pairwise; per image we report the mean pairwise Spearman
  rank correlation and SSIM (:func:`robsal.metrics.sanity.ssim_maps`). Only computed when
  the run has such models.
- Max-sensitivity (Yeh et al. 2019; ``quantus.MaxSensitivity``): the largest relative
  change ||e(x) - e(x + d)||_F / ||e(x)||_F of the channel-reduced map over ``samples``
  draws of uniform noise d in the L-inf ball of ``radius`` (pixel units, [0, 1] scale),
  with x + d clipped to [0, 1]. Lower = more stable.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from robsal.metrics.alignment import spearman_maps
from robsal.metrics.explainer import ExplainFn, compute_maps
from robsal.metrics.sanity import ssim_maps


def seed_groups(models: dict[str, float]) -> dict[float, list[str]]:
    """{eps: [model names]} for every eps shared by two or more models (name -> eps)."""
    by_eps: dict[float, list[str]] = {}
    for name, eps in models.items():
        by_eps.setdefault(float(eps), []).append(name)
    return {e: sorted(n) for e, n in by_eps.items() if len(n) >= 2}


def pairwise_similarity(maps: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Mean over model pairs of per-image Spearman and SSIM; maps: list of (N, H, W)."""
    if len(maps) < 2:
        raise ValueError("seed stability needs maps of at least two models")
    rho, ssim = [], []
    for a, b in itertools.combinations(maps, 2):
        rho.append(spearman_maps(a, b))
        ssim.append(ssim_maps(a, b))
    return {"seed_spearman": np.mean(rho, axis=0), "seed_ssim": np.mean(ssim, axis=0)}


def max_sensitivity(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    explain_fn: ExplainFn,
    *,
    radius: float = 0.02,
    samples: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    image_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Max relative Frobenius change of the map under uniform L-inf noise: (N,) >= 0.

    NaN where the original map is all zero. ``image_ids`` (N,): handed to ``explain_fn``
    (per-image seeds of the random methods, :mod:`robsal.metrics.explainer`); with or
    without them an image's baselines/noise are the same for x and every x + d, so the
    change measures the input perturbation, not fresh method noise.
    """
    base = compute_maps(explain_fn, model, images, targets, method, batch_size, image_ids)  # (N, H, W)
    norm = np.sqrt((base**2).reshape(base.shape[0], -1).sum(1))
    gen = torch.Generator().manual_seed(seed)
    worst = np.zeros(base.shape[0])
    for _ in range(samples):
        noise = (torch.rand(images.shape, generator=gen) * 2 - 1) * radius
        noisy = (images + noise.to(images.device, images.dtype)).clamp(0, 1)
        maps = compute_maps(explain_fn, model, noisy, targets, method, batch_size, image_ids)
        diff = np.sqrt(((maps - base) ** 2).reshape(base.shape[0], -1).sum(1))
        worst = np.maximum(worst, diff)
    out = np.full(base.shape[0], np.nan)
    ok = norm > 0
    out[ok] = worst[ok] / norm[ok]
    return out
