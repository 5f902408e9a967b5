"""The main job end to end on the tiny preset: the run-directory contract and resumption."""

import json

import numpy as np
import pandas as pd

from robsal.cli import main
from robsal.io import load_npz
from robsal.rundir import read_stages


def test_tiny_run_writes_the_contract(tiny_run):
    run = tiny_run
    assert (run / "config.yaml").exists() and (run / "report.html").exists()
    splits = pd.read_csv(run / "splits.csv")
    assert list(splits.columns) == ["image_id", "lesion_id", "label", "split", "fold"]
    models = sorted(p.name for p in (run / "models").iterdir())
    assert models == ["robust_eps4", "standard"]
    for name in models:
        meta = json.loads((run / "models" / name / "model.json").read_text())
        m = meta["metrics"]
        assert 0.0 <= m["clean_accuracy"] <= 1.0 and 0.0 <= m["balanced_accuracy"] <= 1.0
        assert set(m["robust_accuracy"]) == {"1.0", "4.0"} or set(m["robust_accuracy"]) == {"1", "4"}
        history = [json.loads(line) for line in (run / "models" / name / "history.jsonl").read_text().splitlines()]
        for key in ("epoch", "phase", "train_loss", "train_accuracy", "val_accuracy", "epoch_seconds", "images_per_second"):
            assert key in history[-1], key
    ids = None
    for name in models:
        for method in ("gradient", "integrated_gradients_uniform", "gradcam"):
            npz = load_npz(run / "saliency" / name / f"{method}.npz")
            assert npz["maps"].dtype == np.float32 and npz["maps"].ndim == 3
            assert len(npz["image_ids"]) == len(npz["targets"]) == len(npz["predictions"]) == len(npz["maps"])
            ids = npz["image_ids"].tolist() if ids is None else ids
            assert npz["image_ids"].tolist() == ids  # same images, same order, for every model and method
    per_image = pd.read_csv(run / "metrics" / "per_image.csv")
    assert list(per_image.columns) == ["image_id", "model", "method", "metric", "value"]
    assert {"relevance_mass", "gini"} <= set(per_image["metric"])
    assert (run / "metrics" / "summary.json").exists() and (run / "metrics" / "summary.csv").exists()
    assert set(read_stages(run)) >= {"data", "train", "explain", "evaluate", "report"}


def test_rerun_skips_finished_stages_and_redoes_a_forced_one(tiny_run, capsys):
    before = read_stages(tiny_run)
    weights = (tiny_run / "models" / "standard" / "model.safetensors").read_bytes()
    code = main(["run", "--config", "tiny", "--device", "cpu", "--out", str(tiny_run), "--no-progress", "--force", "report"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("skipped") == 4 and "figures and HTML report: done" in err
    after = read_stages(tiny_run)
    assert after["train"] == before["train"] and after["report"] != before["report"]
    assert (tiny_run / "models" / "standard" / "model.safetensors").read_bytes() == weights


def test_a_run_directory_refuses_another_config(tiny_run, capsys):
    code = main(["run", "--config", "tiny", "--set", "train.phase2.epochs=3", "--out", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 2 and "another config" in err and "train.phase2.epochs" in err


def test_run_under_torchrun_says_how_to_train_data_parallel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["run", "--config", "tiny", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torchrun --nproc_per_node N -m robsal train" in err
    assert not (tmp_path / "r").exists()  # nothing written
