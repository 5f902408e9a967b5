"""Statistics over per-image metrics: bootstrap CIs, paired tests, Holm, verdicts.

- Mean and percentile-bootstrap CI (Efron & Tibshirani 1993, ch. 13): ``n_boot``
  resamples of the images with replacement, the CI is the (alpha/2, 1 - alpha/2)
  quantiles of the resampled means. Seeded from (seed, model, method, metric) so a number
  does not depend on the order in which others were computed.
- Paired difference robust minus standard over the same images (inner join on
  image_id): mean difference with its bootstrap CI, and the two-sided Wilcoxon
  signed-rank p-value (``scipy.stats.wilcoxon``, zero differences dropped: Wilcoxon's
  original treatment; exact distribution for small samples without ties, normal
  approximation otherwise, as scipy chooses).
- Holm's step-down correction (Holm 1979) across the metrics compared for one
  (robust model, method) pair.
- Verdicts per claim of the paper: each claim is a set of (metric, expected sign). A
  metric *supports* when its Holm-adjusted p < alpha and its mean difference has the
  expected sign, *contradicts* when significant with the opposite sign. The claim is
  "supported" (all metrics support), "partly supported" (some support, none
  contradict), "mixed" (some of each), "contradicted" (some contradict, none support)
  or "not supported" (none significant). Thresholds are fixed here, in advance, and
  never tuned to the outcome.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

# claim key -> (sentence, [(metric, expected sign of robust - standard)])
CLAIMS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "sharper": ("robust maps are sharper", [("gini", +1), ("entropy", -1), ("total_variation", -1)]),
    "on_lesion": ("robust maps sit on the lesion", [("relevance_mass", +1), ("relevance_mass_lift", +1)]),
    "coherent": ("robust maps are more coherent", [("spatial_autocorrelation", +1)]),
}

PRETTY = {
    "gini": "Gini",
    "entropy": "entropy",
    "total_variation": "TV",
    "relevance_mass": "relevance mass",
    "relevance_mass_lift": "lift",
    "spatial_autocorrelation": "autocorrelation",
}


def stable_seed(seed: int, *keys: str) -> int:
    """A seed that depends on ``seed`` and the keys only (not on call order)."""
    return (int(seed) * 1_000_003 + zlib.crc32("|".join(keys).encode())) % (2**32)


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap (1 - alpha) CI."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-d sample")
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci got NaN; drop undefined values first")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (B, n) resampled indices
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 if all are zero."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("wilcoxon_p needs at least one difference")
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (same order as given), each in [0, 1]."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


@dataclass
class Paired:
    """Robust minus standard for one model pair, method and metric."""

    robust: str
    standard: str
    method: str
    metric: str
    n: int
    diff: float
    low: float
    high: float
    p: float
    p_holm: float = float("nan")


def paired_differences(
    per_image: pd.DataFrame,
    robust: str,
    standard: str,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[Paired]:
    """Paired robust - standard per method and metric, Holm-corrected across metrics per method."""
    out: list[Paired] = []

    def series(model: str) -> dict[tuple[str, str], pd.Series]:
        d = per_image[per_image["model"] == model]
        return {k: g.set_index("image_id")["value"] for k, g in d.groupby(["method", "metric"], sort=True)}

    r, s = series(robust), series(standard)
    for method in sorted({me for me, _ in r} & {me for me, _ in s}):
        rows: list[Paired] = []
        for metric in sorted(mt for me, mt in r if me == method and (me, mt) in s):
            a, b = r[(method, metric)], s[(method, metric)]
            common = a.index.intersection(b.index)  # the same images
            if len(common) == 0:
                continue
            d = (a.loc[common] - b.loc[common]).to_numpy(dtype=np.float64)
            mean, lo, hi = bootstrap_ci(
                d, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, robust, standard, method, metric)
            )
            rows.append(Paired(robust, standard, method, metric, len(d), mean, lo, hi, wilcoxon_p(d)))
        for row, adj in zip(rows, holm([x.p for x in rows])):
            row.p_holm = float(adj)
        out.extend(rows)
    return out



def verdict_status(n_support: int, n_contra: int, n_tests: int) -> str:
    """A claim's verdict from its tests: how many significantly support it, contradict it, and were made.

    All support: "supported"; some support and none contradicts: "partly supported"; both:
    "mixed"; only contradictions: "contradicted"; none significant: "not supported".
    """
    if n_support and not n_contra:
        return "supported" if n_support == n_tests else "partly supported"
    if n_support and n_contra:
        return "mixed"
    if n_contra:
        return "contradicted"
    return "not supported"

def verdicts(pairs: list[Paired], *, alpha: float = 0.05) -> list[dict]:
    """One verdict per (robust model, method, claim) present in ``pairs``."""
    index = {(p.robust, p.method, p.metric): p for p in pairs}
    out = []
    for robust, method in sorted({(p.robust, p.method) for p in pairs}):
        for key, (sentence, parts) in CLAIMS.items():
            found = [(index[(robust, method, m)], sign) for m, sign in parts if (robust, method, m) in index]
            if not found:
                continue
            support = [p for p, sign in found if p.p_holm < alpha and np.sign(p.diff) == sign]
            contra = [p for p, sign in found if p.p_holm < alpha and np.sign(p.diff) == -sign]
            status = verdict_status(len(support), len(contra), len(found))
            detail = "; ".join(
                f"{PRETTY.get(p.metric, p.metric)} {p.diff:+.3g} [{p.low:.3g}, {p.high:.3g}], {format_p(p.p_holm)}"
                for p, _ in found
            )
            standard = found[0][0].standard
            out.append(
                {
                    "claim": key,
                    "robust": robust,
                    "standard": standard,
                    "method": method,
                    "verdict": status,
                    "line": f"{sentence} ({robust} vs {standard}, {method}): {status}: {detail}"
                    f" (n = {found[0][0].n}, Holm-corrected)",
                }
            )
    return out
