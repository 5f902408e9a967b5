"""`robsal train` / `robsal evaluate-robustness` on the tiny preset (built-in synthetic data)."""

from __future__ import annotations

import json

import pytest

from robsal.cli import main


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_then_evaluate_robustness_on_tiny(tmp_path, capsys):
    run = tmp_path / "run"
    fast = ["--set", "robustness.max_images=6", "--set", "robustness.steps=2", "--set", "data.cache_dir=" + str(tmp_path / "cache")]
    assert main(["train", "--config", "tiny", "--out", str(run), "--device", "cpu", "--no-progress", *fast]) == 0
    out = capsys.readouterr().out
    assert "standard: clean" in out and "robust_eps4: clean" in out
    for name in ("standard", "robust_eps4"):
        d = run / "models" / name
        assert (d / "model.safetensors").exists() and (d / "history.jsonl").exists()
        meta = json.loads((d / "model.json").read_text())
        assert set(meta["metrics"]["robust_accuracy"]) == {"1", "4"}
        assert 0 <= meta["metrics"]["clean_accuracy"] <= 1
    assert json.loads((run / "models" / "robust_eps4" / "model.json").read_text())["eps_l2"] == pytest.approx(4 * 32 / 224)
    # re-running skips the trained models; evaluate-robustness adds an eps to model.json
    assert main(["train", "--config", "tiny", "--out", str(run), "--device", "cpu", "--no-progress", *fast]) == 0
    assert main(["evaluate-robustness", str(run), "--eps", "2", "--steps", "2", "--max-images", "6",
                 "--models", "standard", "--no-progress"]) == 0
    meta = json.loads((run / "models" / "standard" / "model.json").read_text())
    assert list(meta["metrics"]["robust_accuracy"]) == ["1", "2", "4"]


def test_evaluate_robustness_without_models_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    from robsal.config import load_config
    from robsal.rundir import init_run

    init_run(load_config("tiny", ["device=cpu"]), run)
    assert main(["evaluate-robustness", str(run), "--models", "standard"]) == 2
    assert "no trained model 'standard'" in capsys.readouterr().err
