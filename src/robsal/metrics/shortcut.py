"""Measurements of the positive control: does a model use a planted shortcut, and do its maps show it?

The positive control (:mod:`robsal.experiments.control`, docs/positive_control.md) trains
models on data where one artifact comes with one class at rate p, and shows every test image
to them twice: with the artifact and without it (:mod:`robsal.data.counterfactual`). The
images differ only where the artifact is painted, so any change in the prediction is caused by
the artifact. That is the ground truth a saliency method is judged against.

Reliance (per model and rate, on the test images):

* ``flip``: 1 when the model predicts the planted class with the artifact and another class
  without it, else 0. On planted-class images that is "the prediction flips when the artifact
  is removed"; on the other classes "the prediction flips to the planted class when it is
  added". ``flip`` is that indicator's mean, with a percentile-bootstrap CI
  (:func:`robsal.metrics.stats.bootstrap_ci`).
* ``prob_drop``: P(planted class | with) - P(planted class | without), averaged.

Visibility (per model, rate and saliency method, on the maps of the with-artifact images):

* ``artifact_share``: share of the map's mass on the artifact's mask (relevance mass,
  :func:`robsal.metrics.localisation.relevance_mass`); ``artifact_area`` is the mask's share
  of the image (the share a uniform map gets); ``artifact_lift`` = share / area (chance 1).
* Detection AUROC (:func:`auroc`): how well the artifact share separates shortcut-reliant from
  non-reliant cases. Across models: the maps of the highest-rate model (reliant) against those
  of the lowest-rate model (p = 0: the artifact never came with a class, so nothing to rely on)
  on the same test images. Across images: images whose prediction flips against those whose
  prediction does not, for one model. AUROC 1: every reliant case has a higher share than every
  non-reliant one; 0.5: the share does not tell them apart (a constant map, or a map that points
  at the artifact whatever the model does).

Verdicts follow :mod:`robsal.metrics.stats`: a test *supports* when its Holm-adjusted p-value
(Holm across the tests of one model and method) is below alpha with the expected sign. The
tests of "detects the shortcut": the artifact share is higher on the highest-rate model's maps
than on the lowest-rate model's (paired over the same images, Wilcoxon signed-rank), and,
where the highest-rate model has both flipping and non-flipping images, the share is higher on
the flipping ones (Mann-Whitney U, whose statistic is the AUROC). "detects the shortcut" when
every test supports; "does not detect the shortcut" otherwise. A verdict needs a shortcut to
detect: when the highest-rate model's flip share does not exceed the lowest-rate model's (CI of
the paired difference above 0), it is "no shortcut to detect"; when the competence gate failed
for a compared model, "not comparable".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from robsal.metrics.localisation import lesion_area, relevance_mass
from robsal.metrics.stats import bootstrap_ci, format_p, holm, stable_seed, wilcoxon_p

DETECTS = "detects the shortcut"
DOES_NOT = "does not detect the shortcut"
NO_SHORTCUT = "no shortcut to detect"
NOT_COMPARABLE = "not comparable"


# --------------------------------------------------------------------------- per image


def reliance_per_image(prob_with: np.ndarray, prob_without: np.ndarray, cls: int) -> dict[str, np.ndarray]:
    """Per-image reliance on the artifact from class probabilities (N, K) with and without it.

    Returns ``pred_with``, ``pred_without`` (N,) int, ``p_with``, ``p_without`` (N,) float (the
    planted class's probability), ``prob_drop`` = p_with - p_without and ``flip`` (N,) int: 1 when
    the prediction is the planted class with the artifact and another class without it.
    """
    pw, po = np.asarray(prob_with, np.float64), np.asarray(prob_without, np.float64)
    if pw.shape != po.shape or pw.ndim != 2:
        raise ValueError(f"probabilities with {pw.shape} and without {po.shape} must both be (N, K)")
    pred_w, pred_o = pw.argmax(1), po.argmax(1)
    return {
        "pred_with": pred_w,
        "pred_without": pred_o,
        "p_with": pw[:, cls],
        "p_without": po[:, cls],
        "prob_drop": pw[:, cls] - po[:, cls],
        "flip": ((pred_w == cls) & (pred_o != cls)).astype(np.int64),
    }


def artifact_share(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """``share`` (mass on the mask, NaN for an all-zero map or empty mask), ``area`` and ``lift`` per image."""
    share = relevance_mass(maps, masks)
    area = lesion_area(masks)
    lift = np.full(share.shape, np.nan)
    ok = area > 0
    lift[ok] = share[ok] / area[ok]
    return {"share": share, "area": area, "lift": lift}


# --------------------------------------------------------------------------- AUROC


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a reliant case scores above a non-reliant one), ties counting 1/2 (Mann-Whitney U / (n1 n0)).

    NaN when either group is empty.
    """
    a, b = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (a.size * b.size))


def auroc_ci(pos: Sequence[float], neg: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05,
             seed: int = 0) -> tuple[float, float, float]:
    """(AUROC, low, high): percentile-bootstrap CI resampling each group with replacement."""
    a, b = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    est = auroc(a, b)
    if np.isnan(est):
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for k in range(n_boot):
        boots[k] = auroc(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)


def mannwhitney_p(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (AUROC = 0.5 under the null); 1.0 when every value is equal."""
    a, b = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


# --------------------------------------------------------------------------- summaries


def mean_ci(values: Sequence[float], *, n_boot: int, alpha: float, seed: int, keys: Sequence[str]) -> dict[str, Any]:
    """{n, mean, low, high} of the finite values (NaN fields when there is none)."""
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    m, lo, hi = bootstrap_ci(x, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, *keys))
    return {"n": int(x.size), "mean": m, "low": lo, "high": hi}


def paired_test(a: dict[str, float], b: dict[str, float], *, n_boot: int, alpha: float, seed: int,
                keys: Sequence[str]) -> dict[str, Any]:
    """a - b over the image ids both have (finite values): {n, diff, low, high, p} (Wilcoxon)."""
    common = sorted(k for k in set(a) & set(b) if np.isfinite(a[k]) and np.isfinite(b[k]))
    if not common:
        return {"n": 0, "diff": float("nan"), "low": float("nan"), "high": float("nan"), "p": float("nan")}
    d = np.array([a[k] - b[k] for k in common], np.float64)
    m, lo, hi = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, *keys))
    return {"n": len(d), "diff": m, "low": lo, "high": hi, "p": wilcoxon_p(d)}


def holm_verdict(tests: list[dict[str, Any]], *, alpha: float) -> list[dict[str, Any]]:
    """Add ``p_holm`` (Holm across ``tests``, those with a p-value) and ``supports`` to each test.

    Each test has ``p``, ``effect`` (diff, or AUROC - 0.5) and ``sign`` (+1 or -1, the expected
    direction); ``supports`` is True when p_holm < alpha and sign(effect) == sign.
    """
    ok = [t for t in tests if np.isfinite(t.get("p", float("nan")))]
    for t, adj in zip(ok, holm([t["p"] for t in ok]) if ok else []):
        t["p_holm"] = float(adj)
        t["supports"] = bool(adj < alpha and np.sign(t["effect"]) == t["sign"])
        t["contradicts"] = bool(adj < alpha and np.sign(t["effect"]) == -t["sign"])
    for t in tests:
        t.setdefault("p_holm", float("nan"))
        t.setdefault("supports", False)
        t.setdefault("contradicts", False)
    return tests


def detection_verdict(tests: list[dict[str, Any]], *, reliance_shown: bool, comparable: bool,
                      gate_reason: str = "") -> tuple[str, str]:
    """(verdict, reason) of "does this method detect the shortcut?" from Holm-annotated ``tests``."""
    if not comparable:
        return NOT_COMPARABLE, gate_reason
    if not reliance_shown:
        return NO_SHORTCUT, "the highest-rate model does not flip more often than the lowest-rate one"
    defined = [t for t in tests if np.isfinite(t.get("p", float("nan")))]
    if defined and all(t["supports"] for t in defined):
        return DETECTS, ""
    return DOES_NOT, "; ".join(f"{t['name']}: {'not significant' if not t['contradicts'] else 'opposite sign'}"
                               for t in defined if not t["supports"]) or "no test was defined"


def describe_test(t: dict[str, Any]) -> str:
    """One line: 'name +0.12 [0.05, 0.20], p = 0.003' (AUROC tests show the AUROC)."""
    if t.get("kind") == "auroc":
        est = f"AUROC {t['auroc']:.2f} [{t['low']:.2f}, {t['high']:.2f}]"
    else:
        est = f"{t['diff']:+.3g} [{t['low']:.3g}, {t['high']:.3g}]"
    p = format_p(t["p_holm"]) if np.isfinite(t.get("p_holm", float("nan"))) else "p undefined"
    return f"{t['name']} {est}, {p} (n = {t['n']})"
