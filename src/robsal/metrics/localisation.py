"""Localisation of saliency against the lesion mask and the artifact masks.

The paper (Section 2, "Evaluation"; Figure 1) says robust maps attribute "high saliency
values predominantly inside the skin lesion" but judged it by eye. These metrics put a
number on it. All take a batch of channel-reduced maps ``maps`` (N, H, W) >= 0 (sum over
RGB of |attribution|) and boolean masks (N, H, W), and return one value per image (N,)
float64. A value that is undefined for an image (an all-zero map, an empty or full mask)
is NaN; :mod:`robsal.metrics.per_image` drops such rows and counts the rest, it never averages
NaN.

Definitions follow Quantus (Hedstrom et al. 2023) so that ``tests/metrics`` can use it
as an oracle: ``quantus.RelevanceMassAccuracy``, ``RelevanceRankAccuracy``,
``PointingGame``, ``AUC`` with ``abs=True, normalise=False``.

Dermoscopy lesions are large and centred, so chance levels are high: a uniform map has
relevance mass equal to the lesion's area share. :func:`lesion_area` (the chance level)
and :func:`relevance_mass_lift` (relevance mass / area share; chance = 1) are reported
beside the raw scores for that reason.

Boundary-aware localisation (*secondary* metrics). Gradients of robust models are known to
follow edges, and a lesion's edge lies half outside its mask, so strict relevance mass
undercounts maps that sit on the outline. :func:`relevance_mass_dilated` (mass within the
mask dilated by a tolerance) and :func:`border_share` (mass on the band of width
``tolerance`` either side of the mask's boundary; chance level :func:`border_area`) measure
that. The tolerance follows the pointing game of Zhang et al. 2016 ("Top-down neural
attention by excitation backprop", ECCV 2016), which counts a hit within 15 px of the object
at 224 px input, scaled to the input size by :func:`tolerance_px`. They are secondary: they
are reported, and compared robust vs standard, beside the primary scores, but no claim's
verdict (:data:`robsal.metrics.stats.CLAIMS`) uses them, because they were added after the
claims were fixed and a tolerance is a free choice that a verdict must not depend on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import distance_transform_edt
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


# --- boundary-aware localisation (secondary metrics) ------------------------------------

TOLERANCE_REFERENCE_PX = 15.0
"""Zhang et al. 2016's pointing-game tolerance: 15 px ..."""
TOLERANCE_REFERENCE_SIZE = 224
"""... at 224 px input."""


def tolerance_px(
    image_size: int, reference_px: float = TOLERANCE_REFERENCE_PX, reference_size: int = TOLERANCE_REFERENCE_SIZE
) -> float:
    """The boundary tolerance in pixels at ``image_size``: ``reference_px * image_size / reference_size``.

    Zhang et al. 2016 (pointing game) count a hit within 15 px of the object at 224 px
    input, i.e. 6.7 % of the image side; the same share of the side is kept at every size
    (64 px -> 15 * 64 / 224 = 4.29 px). Not rounded: a pixel is within the tolerance when its
    Euclidean distance is <= the returned float.
    """
    if image_size <= 0 or reference_size <= 0 or reference_px < 0:
        raise ValueError(
            f"tolerance_px needs image_size > 0, reference_size > 0, reference_px >= 0; "
            f"got {image_size}, {reference_size}, {reference_px}"
        )
    return float(reference_px) * float(image_size) / float(reference_size)


def _check_tolerance(tolerance: float) -> float:
    t = float(tolerance)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    return t


def _masks3(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks).astype(bool)
    if m.ndim != 3:
        raise ValueError(f"masks {m.shape} must be (N, H, W)")
    return m


def dilate(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """(N, H, W) bool: pixels whose Euclidean distance (between pixel centres) to the mask is <= ``tolerance``.

    The binary dilation by a disc of radius ``tolerance``. An empty mask stays empty.
    """
    m, t = _masks3(masks), _check_tolerance(tolerance)
    out = m.copy()
    for i in range(m.shape[0]):
        if m[i].any() and not m[i].all():
            out[i] = distance_transform_edt(~m[i]) <= t  # 0 on the mask, distance to it elsewhere
    return out


def erode(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """(N, H, W) bool: mask pixels farther than ``tolerance`` from every pixel outside the mask.

    The binary erosion by a disc of radius ``tolerance``, with the image's outside counted as
    unknown rather than background (an image edge that cuts a lesion is not its edge): a
    mask that fills the image stays full.
    """
    m, t = _masks3(masks), _check_tolerance(tolerance)
    out = m.copy()
    for i in range(m.shape[0]):
        if m[i].any() and not m[i].all():
            out[i] = distance_transform_edt(m[i]) > t  # 0 off the mask, distance to the outside on it
    return out


def border_band(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """(N, H, W) bool: pixels within ``tolerance`` of the mask's boundary, on either side.

    ``dilate(masks, t) & ~erode(masks, t)``. Empty for an empty or full mask and for
    ``tolerance`` < 1 (no pixel centre is that close to a pixel on the other side).
    """
    return dilate(masks, tolerance) & ~erode(masks, tolerance)


def relevance_mass_dilated(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> np.ndarray:
    """Share of saliency within ``tolerance`` px of the mask (mask dilated by a disc), in [0, 1].

    Secondary metric (see the module docstring): it forgives maps on the lesion's outline.
    ``tolerance`` = 0 is :func:`relevance_mass`. NaN where the map sums to 0 or the mask is
    empty.
    """
    _flat(maps, masks)  # shape check
    return relevance_mass(maps, dilate(masks, tolerance))


def border_share(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> np.ndarray:
    """Share of saliency on the border band (:func:`border_band`), in [0, 1].

    Secondary metric (see the module docstring): how much of the map sits on the lesion's
    outline, within ``tolerance`` px inside or outside it. Chance level: :func:`border_area`.
    NaN where the map sums to 0, the mask is empty, or the band is empty (a full mask, or
    ``tolerance`` < 1).
    """
    a, _ = _flat(maps, masks)
    band = border_band(masks, tolerance).reshape(a.shape)  # (N, H*W)
    out = _safe_div((a * band).sum(1), a.sum(1))
    out[band.sum(1) == 0] = np.nan
    return out


def border_area(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """Share of the image on the border band, in [0, 1]: the chance level of :func:`border_share`.

    Like :func:`lesion_area` a property of the mask, never compared robust vs standard.
    NaN where the band is empty (as :func:`border_share`).
    """
    band = border_band(masks, tolerance)
    out = band.reshape(band.shape[0], -1).mean(axis=1)
    out[out == 0] = np.nan
    return out


SECONDARY_LOCALISATION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "relevance_mass_dilated": relevance_mass_dilated,
    "border_share": border_share,
    "border_area": lambda maps, masks, tolerance: border_area(masks, tolerance),  # chance level; maps unused
}
"""Secondary localisation metrics: name -> ``fn(maps, masks, tolerance) -> (N,)``.

Reported beside the primary ones and in no claim's verdict; ``border_area`` is a chance
level and is not compared robust vs standard (``robsal.metrics.summary.NOT_COMPARED``).
"""
