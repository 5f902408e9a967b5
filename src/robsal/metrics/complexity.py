"""Sharpness and coherence of a saliency map: Gini, entropy, total variation, autocorrelation.

The paper's claim (Section 2, Results): robust models give "significantly sharper and
more visually coherent" maps. We read *sharper* as concentrated (Gini up, entropy down)
and less noisy (total variation down), and *coherent* as spatially smooth salient regions
(lag-1 spatial autocorrelation up). All functions take channel-reduced maps (N, H, W) >= 0
and return (N,) float64; NaN where undefined (all-zero or constant map as noted).

Gini and entropy follow Quantus (``quantus.Sparseness``, ``quantus.Complexity`` with
``abs=True, normalise=False``) up to its numerical stabilisers (Quantus adds 1e-7 to
every value before Gini and 1e-12 inside the log; we use the exact definitions, which
differ from Quantus by < 1e-6 on maps scaled to max 1). Total variation and spatial
autocorrelation have no Quantus counterpart; tests check them against direct loops.
"""

from __future__ import annotations

import numpy as np


def _flat(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got {maps.shape}")
    return maps.reshape(maps.shape[0], -1)  # (N, H*W)


def gini(maps: np.ndarray) -> np.ndarray:
    """Gini sparseness (Hurley & Rickard 2009; Chalasani et al. 2020) in [0, 1).

    0 for a constant map, (n-1)/n for a single non-zero pixel (n = H*W). Scale-invariant.
    NaN for an all-zero map.
    """
    a = np.sort(_flat(maps), axis=1)  # ascending
    n = a.shape[1]
    k = np.arange(1, n + 1, dtype=np.float64)
    total = a.sum(1)
    num = ((2 * k - n - 1) * a).sum(1)
    out = np.full(a.shape[0], np.nan)
    ok = total > 0
    out[ok] = num[ok] / (n * total[ok])
    return out


def entropy(maps: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the map normalised to sum 1 (Bhatt et al. 2020).

    0 for a single non-zero pixel, log(H*W) (the maximum) for a constant map. NaN for an
    all-zero map.
    """
    a = _flat(maps)
    total = a.sum(1, keepdims=True)
    out = np.full(a.shape[0], np.nan)
    ok = total[:, 0] > 0
    p = a[ok] / total[ok]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[ok] = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return out


def _max_normalised(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype=np.float64)
    peak = m.reshape(m.shape[0], -1).max(1)
    ok = peak > 0
    out = np.zeros_like(m)
    out[ok] = m[ok] / peak[ok, None, None]
    return out, ok


def total_variation(maps: np.ndarray) -> np.ndarray:
    """Mean absolute difference between 4-neighbours of the map scaled to max 1, in [0, 1].

    Anisotropic TV averaged over the 2*H*W - H - W neighbour pairs. The map is divided by
    its maximum first so that the gradient scale of a model does not enter (robust and
    standard models have very different gradient magnitudes). Low = smooth, high = noisy;
    the smoothness measure of the paper's original code, made scale-free. NaN for an
    all-zero map.
    """
    m, ok = _max_normalised(maps)
    dv = np.abs(np.diff(m, axis=1)).reshape(m.shape[0], -1)  # (N, (H-1)*W)
    dh = np.abs(np.diff(m, axis=2)).reshape(m.shape[0], -1)  # (N, H*(W-1))
    tv = np.concatenate([dv, dh], axis=1).mean(1)
    tv[~ok] = np.nan
    return tv


def spatial_autocorrelation(maps: np.ndarray) -> np.ndarray:
    """Lag-1 spatial autocorrelation: Pearson r over all 4-neighbour pixel pairs, in [-1, 1].

    Pairs (m[i, j], m[i+1, j]) and (m[i, j], m[i, j+1]) are pooled and each pair enters
    in both orders (so the statistic is symmetric, like Moran's I with rook weights and a
    common mean). 1 = perfectly smooth, ~0 = white noise. NaN for a constant map
    (peak-to-peak below 1e-6 of the peak: float rounding is not structure).
    """
    m = np.asarray(maps, dtype=np.float64)
    n = m.shape[0]
    a = np.concatenate(
        [m[:, :-1, :].reshape(n, -1), m[:, :, :-1].reshape(n, -1)], axis=1
    )  # (N, P) first of each pair
    b = np.concatenate([m[:, 1:, :].reshape(n, -1), m[:, :, 1:].reshape(n, -1)], axis=1)
    x = np.concatenate([a, b], axis=1)  # symmetric: each pair in both orders
    y = np.concatenate([b, a], axis=1)
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    den = np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    out = np.full(n, np.nan)
    flat = m.reshape(n, -1)
    # a constant map has no correlation; "constant" up to float32 rounding (e.g. Grad-CAM
    # upsampled from a 1x1 feature map), relative to the map's peak
    ok = (den > 0) & (np.ptp(flat, axis=1) > 1e-6 * np.abs(flat).max(axis=1))
    out[ok] = (xc * yc).sum(1)[ok] / den[ok]
    return out


COMPLEXITY_METRICS = {
    "gini": gini,
    "entropy": entropy,
    "total_variation": total_variation,
    "spatial_autocorrelation": spatial_autocorrelation,
}
