"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018; Samek et al. 2017).

Pixels are ranked by the map. *Deletion* replaces the top k/steps share of pixels (all
three channels) by a fill and records the softmax probability of the target class, for
k = 0..steps; the area under that curve is low for a faithful map (most-relevant-first,
MoRF). Deleting least-relevant-first (LeRF) should instead keep the probability high;
``deletion_gap = deletion_lerf_auc - deletion_auc`` is the summary we prefer (higher =
more faithful; it is less sensitive to the model's confidence than either AUC alone).
*Insertion* starts from the fill and restores the top pixels first; its AUC is high for
a faithful map.

Fill: a Gaussian blur of the image (sigma = side / 8, default) or its per-channel mean
colour. Blurring keeps the fill on the image manifold more than black does; the paper
notes (Section 2, Evaluation) that perturbation metrics are questionable for robust
models, which is why the summary places clean accuracy beside every number, and why
these AUCs should be compared across methods within one model first.

AUCs use the trapezoid rule over the removed fraction in [0, 1] and are in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

FAITHFULNESS_METRICS = ("deletion_auc", "deletion_lerf_auc", "deletion_gap", "insertion_auc")


def fill_image(images: torch.Tensor, fill: str = "blur") -> torch.Tensor:
    """The reference image that replaces deleted pixels: (N, 3, H, W) -> (N, 3, H, W)."""
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if fill == "blur":
        side = min(images.shape[-2:])
        sigma = max(side / 8.0, 0.5)
        k = int(2 * round(2 * sigma) + 1)
        k = min(k, 2 * ((side - 1) // 2) + 1)
        return gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])
    raise ValueError(f"unknown fill {fill!r}; use 'blur' or 'mean'")


def _step_masks(order: np.ndarray, n_pixels: int, steps: int, shape: tuple[int, int]) -> np.ndarray:
    """(steps+1, H, W) bool: step k marks the first round(k * P / steps) pixels of ``order``."""
    rank = np.empty(n_pixels, dtype=np.int64)
    rank[order] = np.arange(n_pixels)
    counts = np.round(np.arange(steps + 1) * n_pixels / steps).astype(np.int64)  # (steps+1,)
    return (rank[None, :] < counts[:, None]).reshape(steps + 1, *shape)


@torch.no_grad()
def perturbation_curves(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: np.ndarray,
    *,
    steps: int = 16,
    fill: str = "blur",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Target-class probability along the deletion (MoRF, LeRF) and insertion paths.

    images (N, 3, H, W) in [0, 1] on the model's device; targets (N,); maps (N, H, W).
    Returns {"deletion", "deletion_lerf", "insertion"} -> (N, steps+1) float64, where
    column k is the probability after k/steps of the pixels were deleted (or inserted).
    Ranking uses a stable sort, so ties (e.g. a constant map) keep raster order.
    """
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps {maps.shape} do not match images {tuple(images.shape)}")
    fills = fill_image(images, fill)
    paths = ("deletion", "deletion_lerf", "insertion")
    curves = {p: np.zeros((n, steps + 1)) for p in paths}
    # one job = (image i, path) -> steps+1 images; forward them in chunks of batch_size
    jobs = [(i, p) for i in range(n) for p in paths]
    buf_x, buf_meta = [], []

    def flush() -> None:
        if not buf_x:
            return
        x = torch.cat(buf_x)  # (B*(steps+1), 3, H, W)
        prob = torch.softmax(model(x).float(), dim=1)
        off = 0
        for i, p in buf_meta:
            curves[p][i] = prob[off : off + steps + 1, targets[i]].double().cpu().numpy()
            off += steps + 1
        buf_x.clear()
        buf_meta.clear()

    for i, p in jobs:
        flat = np.asarray(maps[i], dtype=np.float64).ravel()
        order = np.argsort(-flat, kind="stable") if p != "deletion_lerf" else np.argsort(flat, kind="stable")
        m = torch.from_numpy(_step_masks(order, h * w, steps, (h, w))).to(images.device)
        m = m[:, None]  # (steps+1, 1, H, W)
        x, f = images[i : i + 1], fills[i : i + 1]
        xs = torch.where(m, f, x) if p != "insertion" else torch.where(m, x, f)  # (steps+1, 3, H, W)
        buf_x.append(xs)
        buf_meta.append((i, p))
        if sum(b.shape[0] for b in buf_x) >= batch_size:
            flush()
    flush()
    return curves


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under (N, steps+1) curves over the fraction axis [0, 1]: (N,)."""
    steps = curves.shape[1] - 1
    return np.trapezoid(curves, dx=1.0 / steps, axis=1)


def faithfulness_scores(curves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The four per-image metrics of :data:`FAITHFULNESS_METRICS` from the curves."""
    d, l, ins = curve_auc(curves["deletion"]), curve_auc(curves["deletion_lerf"]), curve_auc(curves["insertion"])
    return {"deletion_auc": d, "deletion_lerf_auc": l, "deletion_gap": l - d, "insertion_auc": ins}
