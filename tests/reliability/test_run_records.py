"""Run records are written only after the stage that produces them has succeeded, and a run
folder with no result yet takes a corrected command (issue: advice that does not work)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robsal.config import load_config
from robsal.errors import ConfigError, DataError
from robsal.rundir import has_results, init_run, mark_done


def _folder_dataset(root, n_per_class=22):
    rng = np.random.default_rng(0)
    for c in ("mel", "nv", "bkl"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{c}_{i}.png")
    return root


def test_splits_are_written_only_once_every_image_decoded(tmp_path):
    from robsal.data import prepare

    root = _folder_dataset(tmp_path / "data")
    bad = root / "nv" / "nv_3.png"
    bad.write_bytes(b"not an image")
    cfg = load_config("tiny", ["data.source=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"])
    run = tmp_path / "run"
    init_run(cfg, run)
    with pytest.raises(DataError, match="nv_3.png"):
        prepare(cfg, run, progress=False)
    assert not (run / "splits.csv").exists()
    bad.unlink()  # what the error says to do
    prepare(cfg, run, progress=False)  # works now: the splits are drawn from the fixed dataset
    assert (run / "splits.csv").exists()


def test_a_run_folder_without_results_takes_the_corrected_command(tmp_path):
    run = tmp_path / "run"
    wrong = load_config("tiny", ["data.source=folder", f"data.root={tmp_path / 'typo'}"])
    init_run(wrong, run)
    (run / "splits.csv").write_text("image_id,lesion_id,label,split,fold\n")  # drawn for the wrong data
    assert not has_results(run)
    right = load_config("tiny", ["data.source=folder", f"data.root={tmp_path / 'data'}"])
    init_run(right, run)  # accepted: nothing was finished with the old config
    assert not (run / "splits.csv").exists()
    assert f"root: {tmp_path / 'data'}" in (run / "config.yaml").read_text()
    mark_done(run, "data", seconds=1.0, fp="x")
    with pytest.raises(ConfigError, match="another config"):  # with a finished stage: refused as before
        init_run(wrong, run)


def test_cli_wrong_data_then_corrected_data(tmp_path, capsys):
    from robsal.cli import main

    root = _folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    base = ["train", "--config", "tiny", "--out", str(run), "--no-progress", "--set", f"data.cache_dir={tmp_path / 'c'}",
            "--set", "train.phase1.epochs=0", "--set", "models=[{name: standard, eps: 0}]"]
    assert main([*base, "--data", str(tmp_path / "typo")]) == 2
    assert "typo" in capsys.readouterr().err
    assert main([*base, "--data", str(root)]) == 0
    assert (run / "models" / "standard" / "model.json").exists()
