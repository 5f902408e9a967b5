"""Localisation of saliency against the lesion mask and the artifact masks.

The paper (Section 2, "Evaluation"; Figure 1) says robust maps attribute "high saliency
values predominantly inside the skin lesion" but judged it by eye. These metrics put a
number on it. All take a batch of channel-reduced maps ``maps`` (N, H, W) >= 0 (sum over
RGB of |attribution|) and boolean masks (N, H, W), and return one value per image (N,)
float64. A value that is undefined for an image (an all-zero map, an empty or full mask)
is NaN; :mod:`robsal.metrics.run` drops such rows and counts the rest, it never averages
NaN.

Definitions follow Quantus (Hedstrom et al. 2023) so that ``tests/metrics`` can use it
as an oracle: ``quantus.RelevanceMassAccuracy``, ``RelevanceRankAccuracy``,
``PointingGame``, ``AUC`` with ``abs=True, normalise=False``.

Dermoscopy lesions are large and centred, so chance levels are high: a uniform map has
relevance mass equal to the lesion's area share. :func:`lesion_area` (the chance level)
and :func:`relevance_mass_lift` (relevance mass / area share; chance = 1) are reported
beside the raw scores for that reason.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _flat(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    n = maps.shape[0]
    return maps.reshape(n, -1), masks.reshape(n, -1)  # (N, H*W)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def is_flat(maps: np.ndarray, rel: float = 1e-6) -> np.ndarray:
    """(N,) bool: maps whose peak-to-peak range is at most ``rel`` of their peak (or all zero).

    Such a map ranks no pixel above another (e.g. Grad-CAM upsampled from a 1x1 feature map
    differs only by float rounding), so rank-based scores are undefined for it.
    """
    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return np.ptp(a, axis=1) <= rel * np.abs(a).max(axis=1)


def lesion_area(masks: np.ndarray) -> np.ndarray:
    """Share of the image covered by the mask, in [0, 1]: the chance level of relevance mass."""
    masks = np.asarray(masks).astype(bool)
    return masks.reshape(masks.shape[0], -1).mean(axis=1)


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of total saliency inside the mask, in [0, 1] (Arras et al. 2022).

    NaN where the map sums to 0 or the mask is empty.
    """
    a, s = _flat(maps, masks)
    out = _safe_div((a * s).sum(1), a.sum(1))
    out[s.sum(1) == 0] = np.nan
    return out


def relevance_mass_lift(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Relevance mass divided by the mask's area share; 1 = chance, > 1 = on the mask."""
    return _safe_div(relevance_mass(maps, masks), lesion_area(masks))


def relevance_rank(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the K most salient pixels that lie in the mask, K = mask size, in [0, 1].

    Ties are broken by a stable sort on pixel order (Quantus: unstable sort; no ties in
    the continuous maps where the two are compared). NaN for a flat map (:func:`is_flat`),
    whose "ranking" would be the raster order.
    """
    a, s = _flat(maps, masks)
    k = s.sum(1)
    order = np.argsort(-a, axis=1, kind="stable")  # (N, H*W), most salient first
    s_sorted = np.take_along_axis(s, order, axis=1)
    hits = np.array([s_sorted[i, : k[i]].sum() for i in range(len(k))], dtype=np.float64)
    out = _safe_div(hits, k.astype(np.float64))
    out[is_flat(maps)] = np.nan
    return out


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 if a maximum of the map lies in the mask, else 0 (Zhang et al. 2018; ties: any max).

    NaN where the mask is empty or the map is flat (:func:`is_flat`; every pixel a max).
    """
    a, s = _flat(maps, masks)
    at_max = a == a.max(axis=1, keepdims=True)
    hit = np.any(at_max & s, axis=1).astype(np.float64)
    hit[s.sum(1) == 0] = np.nan
    hit[is_flat(maps)] = np.nan
    return hit


def auroc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of saliency as a pixel classifier of the mask, in [0, 1].

    0.5 = chance. NaN where the mask is empty or covers the whole image, or the map is
    flat (:func:`is_flat`; sklearn would give 0.5 for an exactly constant map, and a
    random number for one that is constant up to float rounding).
    """
    a, s = _flat(maps, masks)
    out = np.full(a.shape[0], np.nan)
    flat = is_flat(maps)
    for i in range(a.shape[0]):
        if 0 < s[i].sum() < s.shape[1] and not flat[i]:
            out[i] = roc_auc_score(s[i], a[i])
    return out


def artifact_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of saliency on an artifact (hair, ruler, vignette, bubble), in [0, 1].

    The paper's Figure 2 failure mode, measured. NaN where the image has no such artifact
    (so averages are over the images that have it).
    """
    return relevance_mass(maps, masks)


LOCALISATION_METRICS = {
    "relevance_mass": relevance_mass,
    "relevance_mass_lift": relevance_mass_lift,
    "relevance_rank": relevance_rank,
    "pointing_game": pointing_game,
    "auroc": auroc,
}
