"""A fake but contract-complete run directory (DESIGN.md) for the report tests.

Numbers are made up but consistent: saliency maps are random, the robust model's
maps sit inside the lesion, the standard model's on a hair artifact, and
per_image.csv holds the relevance mass / artifact share actually computed from
those maps and masks, so the report's failure cases can be checked exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_ID = 'x"><img src=q onerror=alert(2)>'
SIZE = 24
METHODS = ("gradient", "gradcam")
MODELS = (("standard", 0.0), ("robust_eps4", 4.0))


@dataclass
class FakeRun:
    run_dir: Path
    data: object  # PreparedData
    maps: dict  # (model, method) -> (N, H, W)
    test_ids: list[str]
    per_image: pd.DataFrame
    # constants of the fake run, for the tests (conftest is not importable as a module)
    EVIL_CLASS = EVIL_CLASS
    EVIL_ID = EVIL_ID
    METHODS = METHODS
    MODELS = MODELS
    SIZE = SIZE


def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).astype(np.uint8)


def make_fake_run(root: Path, parts: tuple[str, ...] = ("models", "saliency", "metrics", "figures")) -> FakeRun:
    from robsal.config import load_config
    from robsal.data import PreparedData
    from robsal.io import save_npz, write_json, write_text
    from robsal.rundir import init_run, mark_done

    classes = ["mel", "nv", EVIL_CLASS]
    cfg = load_config("tiny", ["device=cpu", f"data.image_size={SIZE}", "saliency.methods=[gradient, gradcam]"])
    cfg.data.classes = classes
    run_dir = init_run(cfg, root / "run")
    mark_done(run_dir, "data", seconds=1.5)

    rng = np.random.default_rng(0)
    rows = []
    per_class = {"train": 4, "val": 1, "test": 2}
    for ci, c in enumerate(classes):
        for split, k in per_class.items():
            for j in range(k):
                iid = f"img_{ci}_{split}_{j}"
                if ci == 2 and split == "test" and j == 0:
                    iid = EVIL_ID
                rows.append({"image_id": iid, "lesion_id": f"les_{ci}_{split}_{j}", "label": c, "split": split,
                             "fold": (j % 2) + 1 if split == "train" else pd.NA})
    splits = pd.DataFrame(rows)
    splits.to_csv(run_dir / "splits.csv", index=False)
    n = len(splits)
    labels = np.array([classes.index(c) for c in splits["label"]], dtype=np.int64)
    masks = np.stack([_disk(SIZE, SIZE / 2 + rng.uniform(-2, 2), SIZE / 2, 6) for _ in range(n)])
    hair = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    hair[:, 2:4, :] = 1  # a horizontal hair near the top edge, outside every lesion
    skin = np.array([224, 172, 150], dtype=float)[None, :, None, None]
    lesion = np.array([[120, 70, 50], [150, 100, 80], [90, 60, 60]], dtype=float)[labels][:, :, None, None]
    img = skin + (lesion - skin) * masks[:, None] - 150.0 * hair[:, None] + rng.normal(0, 12, (n, 3, SIZE, SIZE))
    images = np.clip(img, 0, 255).astype(np.uint8)
    data = PreparedData(images=images, labels=labels, classes=classes, splits=splits, masks=masks,
                        artifact_masks={"hair": hair, "ruler": np.zeros_like(hair)})
    test_rows = data.indices("test")
    test_ids = [data.image_ids[r] for r in test_rows]

    maps: dict = {}
    records = []
    if "models" in parts:
        for mi, (name, eps) in enumerate(MODELS):
            mdir = run_dir / "models" / name
            cm = [[2, 0, 0], [0, 1 + mi, 1 - mi], [1, 0, 1]]
            write_json(mdir / "model.json", {
                "arch": "resnet18", "classes": classes, "eps": eps, "eps_l2": eps * SIZE / 224, "seed": 0,
                "eps_scaling": {"rule": "side", "reference_size": 224, "image_size": SIZE},
                "metrics": {"clean_accuracy": 0.75 - 0.1 * mi, "balanced_accuracy": 0.7 - 0.1 * mi,
                            "robust_accuracy": {"1.0": 0.5 + 0.1 * mi, "4.0": 0.125 + 0.25 * mi},
                            "per_class_accuracy": {c: v for c, v in zip(classes, [1.0, 0.5, 0.5])},
                            "confusion_matrix": cm}})
            hist = "".join(json.dumps({"epoch": ep, "phase": ph, "train_loss": 1.2 - 0.2 * k - 0.1 * mi,
                                       "train_accuracy": 0.4 + 0.1 * k, "val_accuracy": 0.35 + 0.1 * k + 0.05 * mi,
                                       "epoch_seconds": 1.0, "images_per_second": 30.0}) + "\n"
                           for k, (ep, ph) in enumerate([(1, 1), (1, 2), (2, 2)]))
            write_text(mdir / "history.jsonl", hist)
        mark_done(run_dir, "train", seconds=12.0)
    if "saliency" in parts:
        m = masks[test_rows].astype(bool)
        h = hair[test_rows].astype(bool)
        for mi, (name, _) in enumerate(MODELS):
            for method in METHODS:
                noise = rng.random((len(test_rows), SIZE, SIZE)).astype(np.float32)
                # standard: mass on the hair; robust: mass in the lesion (and 10x smaller values)
                focus = h if mi == 0 else m
                mp = (noise * 0.2 + focus * 3.0).astype(np.float32) * (1.0 if mi == 0 else 0.1)
                maps[(name, method)] = mp
                save_npz(run_dir / "saliency" / name / f"{method}.npz", maps=mp, image_ids=np.array(test_ids),
                         targets=labels[test_rows], predictions=labels[test_rows])
                for k, iid in enumerate(test_ids):
                    total = float(mp[k].sum())
                    records.append((iid, name, method, "relevance_mass", float(mp[k][m[k]].sum()) / total))
                    records.append((iid, name, method, "artifact_share_hair", float(mp[k][h[k]].sum()) / total))
                    records.append((iid, name, method, "artifact_share_ruler", 0.0))
                    records.append((iid, name, method, "total_variation", 0.1 * (k + 1) + 0.01 * mi))
        mark_done(run_dir, "saliency", seconds=3.0)
    per_image = pd.DataFrame(records, columns=["image_id", "model", "method", "metric", "value"])
    if "metrics" in parts and records:
        (run_dir / "metrics").mkdir(exist_ok=True)
        per_image.to_csv(run_dir / "metrics" / "per_image.csv", index=False)
        summary = per_image.groupby(["model", "method", "metric"])["value"].agg(["mean", "count"]).reset_index()
        summary.to_csv(run_dir / "metrics" / "summary.csv", index=False)
        # the shape robsal.metrics.run.evaluate_run writes
        write_json(run_dir / "metrics" / "summary.json", {
            "run": str(run_dir), "standard": "standard", "n_images": len(test_ids),
            "models": {name: {"eps": eps, "seed": 0, "clean_accuracy": 0.75} for name, eps in MODELS},
            "comparable": True,
            "gate": {"comparable": True, "models": [name for name, _ in MODELS], "reasons": [], "min_recall": 0.5,
                     "min_explained_per_class": 1,
                     "recall": {name: {c: v for c, v in zip(classes, [1.0, 0.5, 0.5])} for name, _ in MODELS},
                     "balanced_accuracy": {name: 0.7 - 0.1 * mi for mi, (name, _) in enumerate(MODELS)},
                     "explained": {c: 2 for c in classes},
                     "rule": "every compared model recalls every class at >= 0.50 on the test split, "
                             "and every class has >= 1 explained images", "pairs": []},
            "verdicts": [{"claim": "on_lesion", "robust": "robust_eps4", "standard": "standard", "method": "gradient",
                          "verdict": "supported",
                          "line": f"robust maps sit on the lesion (class {EVIL_CLASS}): supported"}],
            "metrics": [{"model": r.model, "method": r.method, "metric": r.metric, "n": r.count, "mean": r.mean,
                         "ci_low": r.mean - 0.05, "ci_high": r.mean + 0.05} for r in summary.itertuples()],
            "paired": [{"robust": "robust_eps4", "standard": "standard", "method": "gradient",
                        "metric": "relevance_mass", "n": len(test_ids), "diff": 0.61, "low": 0.5, "high": 0.7,
                        "p": 0.0123, "p_holm": 0.0246},
                       {"robust": "robust_eps4", "standard": "standard", "method": "gradient",
                        "metric": "artifact_share_ruler", "n": len(test_ids), "diff": 0.0, "low": 0.0, "high": 0.0,
                        "p": 1.0, "p_holm": 1.0}],
            "sanity": {}, "faithfulness_curves": {"standard": {"gradient": {"deletion": [0.9, 0.5, 0.3]}}},
            "stability": {"note": "no seed stability: the run has no two models with the same eps"},
            "settings": {"n_bootstrap": 200, "alpha": 0.05}, "notes": ["a note about <b>bold</b> things"],
            "seconds": 1.0,
        })
        mark_done(run_dir, "metrics", seconds=2.0)
    if "figures" in parts:
        from matplotlib.figure import Figure

        from robsal.report.figures import _figure_png

        for stem in ("metric_relevance_mass", "saliency_overview"):
            fig = Figure(figsize=(2, 1.5))
            fig.subplots().plot([0, 1, 2], [1, 0, 2])
            (run_dir / "figures").mkdir(exist_ok=True)
            (run_dir / "figures" / f"{stem}.png").write_bytes(_figure_png(fig, dpi=50))
    return FakeRun(run_dir=run_dir, data=data, maps=maps, test_ids=test_ids, per_image=per_image)


@pytest.fixture
def fake_run(tmp_path) -> FakeRun:
    return make_fake_run(tmp_path)


@pytest.fixture
def fake_run_factory(tmp_path):
    counter = iter(range(1000))

    def make(parts=("models", "saliency", "metrics", "figures")) -> FakeRun:
        return make_fake_run(tmp_path / f"r{next(counter)}", parts)

    return make
