"""Fixtures of the metrics tests: a run directory built by hand (no data or training stage).

``make_run`` writes RUN/config.yaml, models (untrained 24 px ResNet-18s saved with
``robsal.models.save``) and RUN/saliency/<model>/<method>.npz computed by a stub explain
function, and returns (run_dir, PreparedData, explain_fn).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from robsal.config import ModelSpec, load_config
from robsal.data import PreparedData
from robsal.io import save_npz
from robsal.metrics.explainer import compute_maps
from robsal.models import build_model, save
from robsal.rundir import init_run

SIZE = 24
CLASSES = ["mel", "nv", "bkl"]



def stub_explain(model, images, targets, method):  # noqa: ANN001
    """gradient: d logit_t / dx; input_x_gradient: x * gradient. (N, 3, H, W)."""
    x = images.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, targets.view(-1, 1)).sum(), x)
    if method == "gradient":
        return g
    if method == "input_x_gradient":
        return g * images
    raise ValueError(f"stub_explain has no method {method!r}")


def make_data(n: int = 12, size: int = SIZE, masks: bool = True, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 3, size, size)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    lesion = np.stack(
        [((yy - size / 2 - rng.integers(-3, 4)) ** 2 + (xx - size / 2) ** 2 < (size / 4 + i % 3) ** 2) for i in range(n)]
    ).astype(np.uint8)
    hair = np.zeros((n, size, size), np.uint8)
    hair[::2, :, 3] = 1  # every other image has a "hair"
    labels = np.arange(n) % len(CLASSES)
    splits = pd.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(n)],
            "lesion_id": [f"les{i:03d}" for i in range(n)],
            "label": [CLASSES[k] for k in labels],
            "split": "test",
            "fold": pd.array([pd.NA] * n, dtype="Int64"),
        }
    )
    return PreparedData(
        images=images,
        labels=labels.astype(np.int64),
        classes=CLASSES,
        splits=splits,
        masks=lesion if masks else None,
        artifact_masks={"hair": hair} if masks else {},
    )


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    def _make(
        models=(("standard", 0.0, 0), ("standard_s1", 0.0, 1), ("robust_eps4", 4.0, 0)),
        methods=("gradient", "input_x_gradient"),
        masks: bool = True,
        overrides: tuple[str, ...] = (),
        n_images: int = 9,
        recall: dict | None = None,  # model -> {class: test recall}; default 0.9 for every class
    ):
        run = tmp_path_factory.mktemp("run")
        cfg = load_config(
            "tiny",
            [
                "device=cpu",
                f"data.image_size={SIZE}",
                "metrics.n_bootstrap=200",
                "metrics.deletion_steps=4",
                "metrics.sanity_images=2",
                "metrics.sensitivity_samples=2",
                *overrides,
            ],
        )
        cfg.models = [ModelSpec(name, eps, seed) for name, eps, seed in models]
        init_run(cfg, run)
        data = make_data(n=12, masks=masks)
        idx = np.arange(n_images)
        x, _ = data.batch(idx)
        y = torch.from_numpy(data.labels[idx])
        for k, (name, eps, seed) in enumerate(models):
            torch.manual_seed(seed + 10 * k)
            model = build_model("resnet18", CLASSES, image_size=SIZE, meta={"eps": eps, "seed": seed}).eval()
            per_class = (recall or {}).get(name, {c: 0.9 for c in CLASSES})
            save(model, run / "models" / name, metrics={"clean_accuracy": 0.5 + 0.1 * k, "balanced_accuracy": 0.4,
                                                         "per_class_accuracy": per_class})
            for method in methods:
                maps = compute_maps(stub_explain, model, x, y, method).astype(np.float32)
                save_npz(
                    run / "saliency" / name / f"{method}.npz",
                    maps=maps,
                    image_ids=np.array(data.image_ids)[idx],
                    targets=y.numpy().astype(np.int64),
                    predictions=model(x).argmax(1).numpy().astype(np.int64),
                )
        return run, data, stub_explain

    return _make
