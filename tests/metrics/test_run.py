"""evaluate_run on a hand-built run: files, numbers that match direct computations, notes, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from robsal.errors import DataError, UserError
from robsal.io import load_npz, save_npz
from robsal.metrics import alignment, complexity, localisation
from robsal.metrics.run import evaluate_run


@pytest.fixture(scope="module")
def evaluated(make_run):
    run, data, explain = make_run()
    out = evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    return run, data, out


def test_writes_every_file(evaluated):
    run, _, out = evaluated
    for name in ("per_image.csv", "summary.csv", "summary.json"):
        assert (out / name).exists()
    for fig in ("metrics_sharpness.png", "metrics_localisation.png", "deletion_curves.png", "sanity_randomisation.png"):
        assert (run / "figures" / fig).stat().st_size > 1000, fig
    assert not list(out.glob(".*tmp*"))  # atomic writes left nothing behind


def test_per_image_long_format_and_numbers(evaluated):
    run, data, out = evaluated
    df = pd.read_csv(out / "per_image.csv")
    assert list(df.columns) == ["image_id", "model", "method", "metric", "value"]
    assert df["value"].notna().all()
    assert not df.duplicated(["image_id", "model", "method", "metric"]).any()
    models = set(df["model"])
    assert {"standard", "standard_s1", "robust_eps4", "control", "seeds_eps0"} <= models
    assert set(df[df["model"] == "control"]["method"]) == {"control_sobel", "control_gaussian"}
    # stored gradient maps of the robust model: relevance mass and Gini as computed directly
    arr = load_npz(run / "saliency" / "robust_eps4" / "gradient.npz")
    rows = data.rows_of(arr["image_ids"])
    masks = data.masks[rows].astype(bool)
    sel = df[(df["model"] == "robust_eps4") & (df["method"] == "gradient")].set_index(["metric", "image_id"])["value"]
    rm = localisation.relevance_mass(arr["maps"], masks)
    np.testing.assert_allclose(sel.loc["relevance_mass"].loc[arr["image_ids"]].to_numpy(), rm, rtol=1e-6)
    np.testing.assert_allclose(
        sel.loc["gini"].loc[arr["image_ids"]].to_numpy(), complexity.gini(arr["maps"]), rtol=1e-6
    )
    # the Sobel control scores what a direct computation gives
    x, _ = data.batch(rows)
    sob = alignment.sobel_map(x.numpy())
    ctrl = df[(df["model"] == "control") & (df["method"] == "control_sobel")].set_index(["metric", "image_id"])["value"]
    np.testing.assert_allclose(
        ctrl.loc["relevance_mass"].loc[arr["image_ids"]].to_numpy(), localisation.relevance_mass(sob, masks), rtol=1e-6
    )
    np.testing.assert_allclose(ctrl.loc["edge_correlation"].to_numpy(), 1.0)
    # artifact share only for images that have a hair (every other image)
    hair = sel.loc["artifact_share_hair"]
    assert sorted(hair.index) == [f"img{i:03d}" for i in range(0, 9, 2)]
    sanity_ids = sorted(sel.loc["sanity_spearman_g1"].index)
    assert sanity_ids == ["img000", "img008"]  # spread over the explained images
    # model-based metrics: faithfulness on every image, sanity / sensitivity on sanity_images
    per_metric = sel.groupby(level=0).size()
    assert per_metric["deletion_auc"] == 9 and per_metric["cos_input_gradient"] == 9
    assert per_metric["sanity_spearman_g1"] == 2 and per_metric["max_sensitivity"] == 2
    assert "cos_input_gradient" not in set(df[df["method"] == "input_x_gradient"]["metric"])


def test_summary_statistics_and_verdicts(evaluated):
    run, _, out = evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["standard"] == "standard"
    assert summary["models"]["robust_eps4"]["clean_accuracy"] == pytest.approx(0.7)
    claims = {(v["robust"], v["method"], v["claim"]) for v in summary["verdicts"]}
    for method in ("gradient", "input_x_gradient"):
        for claim in ("sharper", "on_lesion", "coherent"):
            assert ("robust_eps4", method, claim) in claims
    for v in summary["verdicts"]:
        assert v["verdict"] in ("supported", "partly supported", "mixed", "contradicted", "not supported")
        assert v["line"].startswith("robust maps")
    assert set(summary["sanity"]["standard"]["gradient"]["stages"]) == {"g5", "g4", "g3", "g2", "g1"}
    assert "seeds_eps0" in summary["stability"]
    s = pd.read_csv(out / "summary.csv")
    row = s[(s["model"] == "robust_eps4") & (s["method"] == "gradient") & (s["metric"] == "gini")].iloc[0]
    assert row["clean_accuracy"] == pytest.approx(0.7) and row["vs"] == "standard"
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert row["diff_ci_low"] <= row["diff"] <= row["diff_ci_high"]
    assert 0 <= row["p_value"] <= row["p_holm"] <= 1
    # the paired difference is the mean of per-image differences over the same images
    df = pd.read_csv(out / "per_image.csv")
    g = df[(df["method"] == "gradient") & (df["metric"] == "gini")].pivot(index="image_id", columns="model", values="value")
    assert row["diff"] == pytest.approx((g["robust_eps4"] - g["standard"]).mean(), rel=1e-5)
    # chance levels are reported but never tested
    assert s[s["metric"] == "lesion_area"]["p_value"].isna().all()


def test_no_seed_models_no_masks_says_so(make_run):
    run, data, explain = make_run(
        models=(("standard", 0.0, 0), ("robust_eps4", 4.0, 0)),
        methods=("gradient",),
        masks=False,
        overrides=("metrics.faithfulness=false", "metrics.sanity=false", "metrics.sensitivity=false"),
    )
    out = evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    summary = json.loads((out / "summary.json").read_text())
    assert "no seed stability" in summary["stability"]["note"]
    assert any("no lesion masks" in n for n in summary["notes"])
    df = pd.read_csv(out / "per_image.csv")
    assert "relevance_mass" not in set(df["metric"]) and "gini" in set(df["metric"])
    assert [v["claim"] for v in summary["verdicts"]] == ["sharper", "coherent"]


def test_errors_name_the_culprit(make_run, tmp_path):
    run, data, explain = make_run(
        models=(("standard", 0.0, 0),), methods=("gradient",),
        overrides=("metrics.faithfulness=false", "metrics.sanity=false", "metrics.sensitivity=false"),
    )
    arr = load_npz(run / "saliency" / "standard" / "gradient.npz")
    save_npz(run / "saliency" / "standard" / "other.npz", **{**arr, "image_ids": arr["image_ids"][::-1].copy()})
    with pytest.raises(DataError, match="other.npz"):
        evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    (run / "saliency" / "standard" / "other.npz").unlink()
    save_npz(run / "saliency" / "standard" / "gradient.npz", **{**arr, "maps": arr["maps"][:, :8, :8].copy()})
    with pytest.raises(DataError, match="re-run `robsal explain`"):
        evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    for f in (run / "saliency").rglob("*.npz"):
        f.unlink()
    with pytest.raises(UserError, match="no saliency maps"):
        evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)


def test_stability_can_be_switched_off(make_run):
    run, data, explain = make_run(
        models=(("standard", 0.0, 0), ("standard_s1", 0.0, 1)), methods=("gradient",),
        overrides=("metrics.stability=false", "metrics.faithfulness=false", "metrics.sanity=false",
                   "metrics.sensitivity=false"),
    )
    out = evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stability"] == {"note": "seed stability disabled (metrics.stability: false)"}
    assert summary["verdicts"] == []  # no robust model
    assert not pd.read_csv(out / "per_image.csv")["model"].str.startswith("seeds").any()
