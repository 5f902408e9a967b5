"""robsal.training.adopt: a model robsal did not train joins a run (``robsal run --models NAME=DIR``)."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robsal.config import ModelSpec, load_config
from robsal.errors import ConfigError
from robsal.experiments.cli import with_models
from robsal.models.imported import import_model
from robsal.rundir import ModelRecord, read_saliency


def _export(run_dir, model, out):
    """The run's model as a user would have it: a bare torchvision state dict, saved with torch.save."""
    state = load_file(str(run_dir / "models" / model / "model.safetensors"))
    torch.save({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}, out)
    return out


def test_models_flag_picks_config_models_and_imported_directories(tmp_path):
    cfg = load_config("tiny", ["device=cpu"])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{}")
    picked = with_models(cfg, f"robust_eps4, mine={tmp_path / 'm'}")
    assert [m.name for m in picked.models] == ["robust_eps4", "mine"]
    assert picked.models[1].path == str((tmp_path / "m").resolve()) and cfg.models[1].path is None
    with pytest.raises(ConfigError, match="unknown model 'robust'; the config lists standard, robust_eps4"):
        with_models(cfg, "standard,robust")
    with pytest.raises(ConfigError, match="is not a robsal model directory"):
        with_models(cfg, f"mine={tmp_path}")
    with pytest.raises(ConfigError, match="two models share a name"):
        with_models(cfg, f"standard,standard={tmp_path / 'm'}")
    bad = copy.deepcopy(cfg)
    bad.models = [ModelSpec("mine", eps=4.0, path=str(tmp_path / "m"))]
    from robsal.config import validate

    with pytest.raises(ConfigError, match=r"models\.mine\.eps: an imported model's eps is the one in its model\.json"):
        validate(bad)


def test_models_path_is_hashed_only_when_set():
    """``models[].path`` joined the config later: unset, the fingerprint is the hash of the config
    without the field (what robsal wrote before it existed); set, it changes the fingerprint."""
    import hashlib
    import json

    from robsal.rundir import SECTIONS, fingerprint

    cfg = load_config("tiny", ["device=cpu"])
    d = cfg.to_dict()
    assert all(m["path"] is None for m in d["models"])
    for m in d["models"]:
        del m["path"]
    old = hashlib.sha256(json.dumps({s: d[s] for s in SECTIONS["train"]}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    assert fingerprint(cfg, "train") == old
    with_path = copy.deepcopy(cfg)
    with_path.models[0].path = "/somewhere"
    assert fingerprint(with_path, "train") != old


@pytest.mark.slow
def test_an_imported_model_runs_alone_and_measures_like_the_trained_one(tiny_run, tmp_path):
    """The tiny run's standard model, exported and imported, is measured with the same numbers:
    the same test metrics, and the same Gradient maps of the images both runs explain."""
    weights = _export(tiny_run, "standard", tmp_path / "standard.pth")
    rec = ModelRecord.load(tiny_run / "models" / "standard" / "model.json")
    import_model("torchvision:resnet18", weights, rec.classes, tmp_path / "mine", image_size=rec.image_size)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "robsal", "run", "--config", "tiny", "--device", "cpu", "--no-progress",
           "--set", "saliency.methods=[gradient]", "--models", f"mine={tmp_path / 'mine'}", "--out", str(run)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ours = ModelRecord.trained(run / "models" / "mine" / "model.json")
    assert ours.arch == "torchvision:resnet18" and ours.eps == 0.0
    assert ours.metrics.to_dict() == rec.metrics.to_dict()
    assert "mine (imported torchvision:resnet18, not trained by robsal)" in (run / "report.html").read_text()
    a = read_saliency(run / "saliency" / "mine" / "gradient.npz")
    b = read_saliency(tiny_run / "saliency" / "standard" / "gradient.npz")
    common = sorted(set(a["image_ids"]) & set(b["image_ids"]))
    assert common
    ia = [list(a["image_ids"]).index(i) for i in common]
    ib = [list(b["image_ids"]).index(i) for i in common]
    scale = np.abs(b["maps"][ib]).max()
    np.testing.assert_allclose(a["maps"][ia], b["maps"][ib], atol=1e-5 * scale, rtol=0)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr
