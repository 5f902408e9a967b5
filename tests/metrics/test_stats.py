"""Statistics: textbook bootstrap, Wilcoxon and Holm results; verdict logic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from robsal.metrics import stats as S


def test_bootstrap_two_point_sample_is_exact():
    # resampled means of {0, 1} with n = 2 are 0, 0.5, 1 with probs 1/4, 1/2, 1/4:
    # the 2.5 % and 97.5 % quantiles are 0 and 1
    mean, lo, hi = S.bootstrap_ci(np.array([0.0, 1.0]), n_boot=4000, seed=0)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)


def test_bootstrap_constant_sample_collapses_and_is_deterministic():
    assert S.bootstrap_ci(np.full(7, 2.5), n_boot=200) == (2.5, 2.5, 2.5)
    x = np.random.default_rng(0).normal(size=25)
    assert S.bootstrap_ci(x, seed=3) == S.bootstrap_ci(x, seed=3)
    with pytest.raises(ValueError):
        S.bootstrap_ci(np.array([1.0, np.nan]))


def test_bootstrap_matches_scipy_and_normal_theory():
    x = np.random.default_rng(1).normal(loc=1.0, scale=2.0, size=200)
    mean, lo, hi = S.bootstrap_ci(x, n_boot=20000, seed=0)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(5))
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.03)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))  # textbook normal CI of the mean
    assert lo == pytest.approx(mean - half, abs=0.04)
    assert hi == pytest.approx(mean + half, abs=0.04)


def test_wilcoxon_textbook_exact_values():
    # all six differences positive: exact two-sided p = 2 / 2**6
    assert S.wilcoxon_p(np.arange(1.0, 7.0)) == pytest.approx(2 / 64)
    # W- = 6 with n = 6: P(W <= 6) = 14 / 64 (subsets of {1..6} with rank sum <= 6)
    assert S.wilcoxon_p(np.array([1.0, 2, 3, 4, 5, -6])) == pytest.approx(28 / 64)
    # Wikipedia's example (n = 10, one zero dropped): W+ = 27, W- = 18, not significant
    x1 = np.array([125, 115, 130, 140, 140, 115, 140, 125, 140, 135.0])
    x2 = np.array([110, 122, 125, 120, 140, 124, 123, 137, 135, 145.0])
    d = x1 - x2
    ranks = sps.rankdata(np.abs(d[d != 0]))
    assert ranks[d[d != 0] > 0].sum() == 27 and ranks[d[d != 0] < 0].sum() == 18
    assert 0.5 < S.wilcoxon_p(d) < 0.7
    assert S.wilcoxon_p(np.zeros(5)) == 1.0


def test_holm_textbook():
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(S.holm([0.5, 0.9]), [1.0, 1.0])
    np.testing.assert_allclose(S.holm([0.001]), [0.001])


def _frame(shift: dict[str, float], n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for metric in ("gini", "entropy", "total_variation", "relevance_mass", "spatial_autocorrelation"):
        base = rng.random(n)
        for model, delta in (("standard", 0.0), ("robust", shift.get(metric, 0.0))):
            noise = rng.normal(scale=0.01, size=n) if model == "robust" else 0.0
            vals = base + delta + noise
            rows += [{"image_id": f"i{i}", "model": model, "method": "gradient", "metric": metric, "value": v}
                     for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_verdicts_supported_contradicted_not_supported():
    df = _frame({"gini": 0.1, "entropy": -0.2, "total_variation": -0.05, "relevance_mass": -0.1})
    pairs = S.paired_differences(df, "robust", "standard", n_boot=500)
    v = {x["claim"]: x for x in S.verdicts(pairs)}
    assert v["sharper"]["verdict"] == "supported"
    assert v["sharper"]["line"].startswith("robust maps are sharper (robust vs standard, gradient): supported: Gini +0.1")
    assert "p < 0.001" in v["sharper"]["line"]
    assert v["on_lesion"]["verdict"] == "contradicted"
    assert v["coherent"]["verdict"] == "not supported"
    gini = next(p for p in pairs if p.metric == "gini")
    assert gini.n == 30 and gini.low < 0.1 < gini.high
    assert gini.p_holm >= gini.p


def test_verdict_mixed_and_partly():
    df = _frame({"gini": 0.1, "entropy": 0.2})
    v = {x["claim"]: x["verdict"] for x in S.verdicts(S.paired_differences(df, "robust", "standard", n_boot=200))}
    assert v["sharper"] == "mixed"
    df = _frame({"gini": 0.1})
    v = {x["claim"]: x["verdict"] for x in S.verdicts(S.paired_differences(df, "robust", "standard", n_boot=200))}
    assert v["sharper"] == "partly supported"
