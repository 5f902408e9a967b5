"""`robsal evaluate --run RUN` on a tiny run made by the real data and saliency stages."""

from __future__ import annotations

import json

import pandas as pd
import torch

from robsal.cli import main
from robsal.config import load_config
from robsal.data import prepare
from robsal.models import build_model, save
from robsal.rundir import init_run
from robsal.saliency import explain_run


def test_robsal_evaluate_on_a_tiny_run(tmp_path, capsys, recwarn):
    run = tmp_path / "run"
    cfg = load_config(
        "tiny",
        [
            "device=cpu",
            f"data.cache_dir={tmp_path / 'cache'}",
            "saliency.methods=[gradient, gradcam]",
            "metrics.sensitivity_samples=2",
        ],
    )
    init_run(cfg, run)
    data = prepare(cfg, run, progress=False)
    for k, spec in enumerate(cfg.models):  # untrained models: the files are what is tested here
        torch.manual_seed(k)
        model = build_model("resnet18", cfg.data.classes, image_size=cfg.data.image_size,
                            meta={"eps": spec.eps, "seed": cfg.seed})
        save(model, run / "models" / spec.name, metrics={"clean_accuracy": 0.3 + 0.1 * k})
    # untrained models get few test images right; explain six given ones instead
    ids = [data.image_ids[i] for i in data.indices("test")[:6]]
    explain_run(run, device="cpu", progress=False, data=data, figures=False, image_ids=ids)
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "robust maps are sharper (robust_eps4 vs standard, gradient)" in out
    df = pd.read_csv(run / "metrics" / "per_image.csv")
    assert list(df.columns) == ["image_id", "model", "method", "metric", "value"]
    assert {"standard", "robust_eps4", "control"} <= set(df["model"])
    assert {"gradient", "gradcam", "control_sobel", "control_gaussian"} == set(df["method"])
    # the synthetic data has lesion and artifact masks
    assert {"relevance_mass", "auroc", "lesion_area", "gini", "deletion_auc", "sanity_ssim_g1"} <= set(df["metric"])
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert summary["models"]["robust_eps4"]["clean_accuracy"] == 0.4
    assert summary["n_images"] == 6 and summary["sanity"]["standard"]["gradcam"]["n_images"] == 2
    # Grad-CAM of a 32 px input comes from a 1x1 layer4 map: constant, rank correlation undefined
    assert summary["sanity"]["standard"]["gradcam"]["passed"] is None
    assert summary["sanity"]["standard"]["gradient"]["passed"] in (True, False)
    assert (run / "metrics" / "summary.csv").exists()
    assert (run / "figures" / "deletion_curves.png").exists()
    assert not [w for w in recwarn if "metrics" in str(w.filename)]  # no numpy warnings from our code
    # a bad run directory is a one-line user error (exit code 2)
    assert main(["evaluate", "--run", str(tmp_path / "nope"), "--no-progress"]) == 2
