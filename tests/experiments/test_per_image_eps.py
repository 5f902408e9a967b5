"""Per-image optimal eps (Appendix C.3) on hand-made per-image tables with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from robsal.errors import ConfigError, DataError
from robsal.experiments.per_image_eps import band_for, optimal_eps, write_optimum

EPS_OF = {"eps0_seed0": 0.0, "eps0_seed1": 0.0, "eps2_seed0": 2.0, "eps2_seed1": 2.0,
          "eps4_seed0": 4.0, "eps4_seed1": 4.0, "eps8_seed0": 8.0, "eps8_seed1": 8.0}

# relevance mass per (image, eps) as (seed 0, seed 1); the optimum is the eps of the best seed mean
VALUES = {
    "a": {0: (0.1, 0.1), 2: (0.2, 0.2), 4: (0.5, 0.3), 8: (0.45, 0.3)},  # 4 (0.40 vs 0.375)
    "b": {0: (0.2, 0.2), 2: (0.9, 0.1), 4: (0.4, 0.4), 8: (0.1, 0.1)},   # 2 (0.50; a single seed would say 2 too)
    "c": {0: (0.6, 0.6), 2: (0.1, 0.1), 4: (0.6, 0.6), 8: (0.6, 0.6)},   # tie 0 / 4 / 8 -> 0
    "d": {0: (0.1, 0.1), 2: (0.2, 0.2), 4: (0.3, 0.3), 8: (0.4, 0.4)},   # 8
    "e": {0: (0.1, 0.1), 2: (0.2, 0.2), 4: (0.35, 0.45), 8: (0.1, 0.1)}, # 4
}


def _table(values=VALUES, metric="relevance_mass", method="gradient", extra=()):
    rows = []
    for image, per_eps in values.items():
        for eps, seeds in per_eps.items():
            for seed, v in enumerate(seeds):
                rows.append((image, f"eps{eps}_seed{seed}", method, metric, v))
    rows += list(extra)
    return pd.DataFrame(rows, columns=["image_id", "model", "method", "metric", "value"])


def test_known_optimum_and_share():
    # pseudo-models of evaluate_run (controls, seed stability) must not compete
    extra = [("a", "control", "control_sobel", "relevance_mass", 9.0), ("a", "seeds_eps4", "gradient", "relevance_mass", 9.0)]
    res = optimal_eps(_table(extra=extra), EPS_OF)
    best = dict(zip(res.per_image["image_id"], res.per_image["best_eps"]))
    assert best == {"a": 4.0, "b": 2.0, "c": 0.0, "d": 8.0, "e": 4.0}
    assert res.counts == {0.0: 1, 2.0: 1, 4.0: 2, 8.0: 1}
    assert res.share_in_band == pytest.approx(2 / 5)
    assert res.n_images == 5 and res.n_excluded == 0 and res.direction == "max"
    row_a = res.per_image.set_index("image_id").loc["a"]
    assert row_a["best_value"] == pytest.approx(0.4) and row_a["value_eps8"] == pytest.approx(0.375)


def test_lower_is_better_band_and_missing_values(tmp_path):
    # entropy: lower is better -> the minimum; image "c" lacks eps 8 and is left out
    values = {k: dict(v) for k, v in VALUES.items()}
    del values["c"][8]
    res = optimal_eps(_table(values, metric="entropy"), EPS_OF, metric="entropy", band=(0, 2))
    best = dict(zip(res.per_image["image_id"], res.per_image["best_eps"]))
    assert best == {"a": 0.0, "b": 8.0, "d": 0.0, "e": 0.0}
    assert res.n_excluded == 1 and res.share_in_band == pytest.approx(3 / 4)
    paths = write_optimum(res, tmp_path, tmp_path / "hist")
    assert pd.read_csv(tmp_path / "optimal_eps.csv")["best_eps"].tolist() == [0.0, 8.0, 0.0, 0.0]
    assert (tmp_path / "hist.png") in paths


def test_band_units_and_errors():
    assert band_for((3, 5), 64, 224) == (3.0, 5.0)  # config eps in paper units: no scaling
    lo, hi = band_for((3, 5), 112, None)  # raw radii at 112 px: half the paper values
    assert (lo, hi) == (1.5, 2.5)
    assert band_for((4, 8), 112, None, "pixels") == (1.0, 2.0)  # raw radii, pixel-count rule: a quarter
    with pytest.raises(ConfigError, match="no known direction"):
        optimal_eps(_table(metric="edge_correlation"), EPS_OF, metric="edge_correlation")
    with pytest.raises(DataError, match="no per-image values of metric 'gini'"):
        optimal_eps(_table(), EPS_OF, metric="gini")
    with pytest.raises(DataError, match="method 'occlusion'"):
        optimal_eps(_table(), EPS_OF, method="occlusion")
