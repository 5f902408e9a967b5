"""train_models / tune end to end on a toy dataset: run-directory files, resume, tuned values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from robsal.config import load_config
from robsal.models import load
from robsal.training import train_models, tune
from robsal.training.evaluate import predict

from .conftest import make_toy_data

CPU = torch.device("cpu")


def toy_cfg(*extra: str):
    return load_config("tiny", [
        "device=cpu", "data.image_size=16", "augment.enabled=false",
        "train.phase1.epochs=1", "train.phase2.epochs=1", "train.phase2.batch_size=16",
        "robustness.eps=[0,1,4]", "robustness.steps=3", "robustness.max_images=12", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    data = make_toy_data(n_train=10, n_test=6, n_val=2, size=16)
    cfg = toy_cfg()
    dirs = train_models(cfg, run, data, device="cpu", progress=False)
    return cfg, run, data, dirs


def test_every_model_gets_its_files(trained):
    cfg, run, data, dirs = trained
    assert set(dirs) == {"standard", "robust_eps4"}
    for name, d in dirs.items():
        assert d == run / "models" / name
        meta = json.loads((d / "model.json").read_text())
        m = meta["metrics"]
        for key in ("clean_accuracy", "balanced_accuracy", "per_class_accuracy", "confusion_matrix"):
            assert key in m
        assert set(m["robust_accuracy"]) == {"0", "1", "4"}
        assert all(0 <= v <= 1 for v in m["robust_accuracy"].values())
        assert np.asarray(m["confusion_matrix"]).sum() == len(data.indices("test"))
        assert meta["arch"] == "resnet18" and meta["classes"] == data.classes and meta["seed"] == cfg.seed
        assert meta["eps"] == cfg.model_spec(name).eps
        assert meta["eps_l2"] == pytest.approx(cfg.eps_l2(cfg.model_spec(name).eps))
        assert meta["eps_scaling"] == {"rule": "side", "reference_size": 224, "image_size": cfg.data.image_size}
        assert meta["config"]["train"]["phase2"]["lr"] == cfg.train.phase2.lr
        hist = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
        assert [h["phase"] for h in hist] == ["phase1", "phase2"]
        for h in hist:
            assert {"epoch", "phase", "train_loss", "train_accuracy", "val_accuracy", "epoch_seconds",
                    "images_per_second", "adv_train_accuracy"} <= set(h)
        assert (hist[0]["adv_train_accuracy"] is None) == (name == "standard")


def test_saved_model_reloads_with_the_same_predictions(trained):
    cfg, run, data, dirs = trained
    model = load(dirs["standard"], "cpu")
    test = data.indices("test")
    pred = predict(model, data, test, device=CPU)
    meta = json.loads((dirs["standard"] / "model.json").read_text())
    assert float((pred == data.labels[test]).mean()) == pytest.approx(meta["metrics"]["clean_accuracy"])


def test_completed_models_are_skipped(trained):
    cfg, run, data, dirs = trained
    before = {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in dirs.items()}
    train_models(cfg, run, data, device="cpu", progress=False)
    assert {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in dirs.items()} == before


def test_unknown_model_name_is_a_config_error(trained):
    from robsal.errors import ConfigError

    cfg, run, data, _ = trained
    with pytest.raises(ConfigError, match="nope"):
        train_models(cfg, run, data, names=["nope"], device="cpu", progress=False)


def test_tune_writes_the_cv_table_and_train_reuses_the_best(tmp_path):
    data = make_toy_data(n_train=8, n_test=4, n_val=0, size=16, n_folds=2)
    cfg = toy_cfg("tune.lrs=[0.01,0.0001]", "tune.batch_sizes=[8,16]", "tune.folds=2",
                  "models=[{name: standard, eps: 0}]", "robustness.eps=[1]")
    best = tune(cfg, tmp_path, data, device="cpu", progress=False)
    table = pd.read_csv(tmp_path / "tune" / "cv_table.csv")
    assert len(table) == 4
    assert table[["lr", "batch_size"]].values.tolist() == [[0.01, 8], [0.01, 16], [0.0001, 8], [0.0001, 16]]
    folds = table[["fold_1", "fold_2"]].to_numpy()
    assert np.allclose(table["mean_accuracy"], folds.mean(1))
    assert np.allclose(table["std_accuracy"], folds.std(1, ddof=1))
    top = table.iloc[int(table["mean_accuracy"].to_numpy().argmax())]
    assert (best["lr"], best["batch_size"]) == (top["lr"], top["batch_size"])
    assert json.loads((tmp_path / "tune" / "best.json").read_text())["lr"] == best["lr"]
    assert len((tmp_path / "tune" / "folds.jsonl").read_text().splitlines()) == 8
    # a second call resumes from folds.jsonl: nothing is retrained, same answer
    assert tune(cfg, tmp_path, data, device="cpu", progress=False) == best
    dirs = train_models(cfg, tmp_path, data, device="cpu", progress=False)
    meta = json.loads((dirs["standard"] / "model.json").read_text())
    assert meta["tuned"] == {"lr": best["lr"], "batch_size": best["batch_size"]}
    hist = [json.loads(line) for line in (dirs["standard"] / "history.jsonl").read_text().splitlines()]
    phase2 = [h for h in hist if h["phase"] == "phase2"]
    assert phase2[0]["lr"] == best["lr"] and phase2[0]["batch_size"] == best["batch_size"]
