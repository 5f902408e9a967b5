"""``robsal finetune`` (Appendix D): exactly the named groups train, frozen BatchNorm layers keep
their statistics, early stopping on a plateau, outputs like any other model of the run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from robsal.experiments.finetune import FinetuneSettings, Plateau, parse_groups, run_finetune

GROUP_PREFIXES = {
    1: ("net.conv1.", "net.bn1.", "net.layer1."),
    2: ("net.layer2.",),
    3: ("net.layer3.",),
    4: ("net.layer4.",),
    5: ("net.fc.",),
}


def _group(key: str) -> int | None:
    for g, prefixes in GROUP_PREFIXES.items():
        if key.startswith(prefixes):
            return g
    return None  # the normalisation buffers


@pytest.fixture(scope="module")
def run_dir(_one_thread, sweep_cfg, tmp_path_factory):
    """A run with an (untrained) standard and "robust" model: fine-tuning only needs weights."""
    from robsal.data import prepare
    from robsal.models import build_model, save
    from robsal.rundir import init_run
    from robsal.training import evaluate_model
    from robsal.utils import seed_everything

    run = tmp_path_factory.mktemp("ft") / "run"
    init_run(sweep_cfg, run)
    data = prepare(sweep_cfg, run, progress=False)
    for seed, (name, eps) in enumerate((("standard", 0.0), ("robust_eps4", 4.0))):
        seed_everything(seed)
        model = build_model("resnet18", data.classes, image_size=data.image_size)
        metrics = evaluate_model(model.eval(), data, sweep_cfg, device=torch.device("cpu"), progress=False)
        save(model, run / "models" / name, name=name, eps=eps, eps_l2=sweep_cfg.eps_l2(eps), seed=seed,
             metrics=metrics)
    return run


def test_finetune_trains_exactly_the_named_groups(run_dir, capsys):
    from robsal.cli import main
    from robsal.models import load

    rc = main(["finetune", "--run", str(run_dir), "--from", "robust_eps4", "--groups", "4-5", "--lr", "1e-3",
               "--max-epochs", "1", "--images", "all", "--no-progress"])
    assert rc == 0
    assert "robust_eps4_ft4-5: clean" in capsys.readouterr().out
    before = load(run_dir / "models" / "robust_eps4").state_dict()
    after = load(run_dir / "models" / "robust_eps4_ft4-5").state_dict()
    assert before.keys() == after.keys()
    changed_buffers = set()
    for key, old in before.items():
        g = _group(key)
        same = torch.equal(old, after[key])
        if g in (None, 1, 2, 3):
            # frozen: parameters bit-identical, and BatchNorm statistics unchanged (eval mode)
            assert same, f"{key} (group {g}) changed"
        elif key.endswith(("weight", "bias")):
            assert not same, f"{key} (group {g}) was not trained"
        elif key.endswith(("running_mean", "running_var")) and not same:
            changed_buffers.add(key)
    assert changed_buffers, "the unfrozen group's BatchNorm layers should update their statistics"

    meta = json.loads((run_dir / "models" / "robust_eps4_ft4-5" / "model.json").read_text())
    assert meta["name"] == "robust_eps4_ft4-5" and meta["eps"] == 4.0
    assert meta["finetuned_from"]["name"] == "robust_eps4"
    ft = meta["finetune"]
    assert ft["groups"] == [4, 5] and ft["epochs"] == 1 and ft["frozen_bn_eval"] is True and ft["lr"] == 1e-3
    assert "clean_accuracy" in meta["metrics"] and "1" in meta["metrics"]["robust_accuracy"]
    history = [json.loads(line) for line in (run_dir / "models" / "robust_eps4_ft4-5" / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [1] and history[0]["phase"] == "finetune"

    table = pd.read_csv(run_dir / "finetune" / "accuracy.csv")
    assert list(table["model"]) == ["standard", "robust_eps4_ft4-5", "robust_eps4"]
    assert table["clean_accuracy"].iloc[1] == pytest.approx(meta["metrics"]["clean_accuracy"])
    for stem in ("finetune_accuracy", "finetune_gradient"):
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 0
    assert (run_dir / "finetune" / "saliency" / "robust_eps4_ft4-5" / "gradient.npz").exists()

    # a second call skips the finished variant
    mtime = (run_dir / "models" / "robust_eps4_ft4-5" / "model.safetensors").stat().st_mtime_ns
    run_finetune(run_dir, "robust_eps4", [(4, 5)], settings=FinetuneSettings(lr=1e-3, max_epochs=1),
                 images="all", progress=False, figures=False)
    assert (run_dir / "models" / "robust_eps4_ft4-5" / "model.safetensors").stat().st_mtime_ns == mtime


def test_early_stopping_triggers_on_a_plateau(run_dir):
    # lr 0 and only the head unfrozen (every BatchNorm layer frozen, in eval mode): the model
    # cannot change, so the validation loss is exactly constant after the first epoch.
    settings = FinetuneSettings(lr=0.0, patience=4, lr_patience=2, max_epochs=50)
    result = run_finetune(run_dir, "robust_eps4", [(5,)], settings=settings, progress=False, figures=False)
    ft = result.variants["robust_eps4_ft5"]
    assert ft["stopped"] == "early" and ft["epochs"] == 5 and ft["best_epoch"] == 1
    history = [json.loads(line) for line in (run_dir / "models" / "robust_eps4_ft5" / "history.jsonl").open()]
    assert [h["event"] for h in history] == ["improved", "wait", "reduce_lr", "wait", "stop"]
    assert len({h["val_loss"] for h in history}) == 1
    from robsal.models import load

    a = load(run_dir / "models" / "robust_eps4").state_dict()
    b = load(run_dir / "models" / "robust_eps4_ft5").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plateau_schedule_matches_the_paper():
    # Appendix A: lr x0.1 after 5 epochs without a lower validation loss, stop after 10
    p = Plateau(patience=10, lr_patience=5)
    losses = [1.0, 0.8, 0.8, 0.9, 0.85, 0.81, 0.8, 0.7] + [0.7] * 10
    events = [p.step(v) for v in losses]
    assert events[:8] == ["improved", "improved", "wait", "wait", "wait", "wait", "reduce_lr", "improved"]
    assert events[8:] == ["wait"] * 4 + ["reduce_lr"] + ["wait"] * 4 + ["stop"]
    assert p.best == 0.7
    assert Plateau(3, 5).step(float("nan")) == "wait"


def test_groups_parsing_and_user_errors(run_dir, capsys):
    from robsal.cli import main
    from robsal.errors import ConfigError

    assert parse_groups("5,4-5,3-5,2-5") == [(5,), (4, 5), (3, 4, 5), (2, 3, 4, 5)]
    for bad, msg in (("6", "between 1 and 5"), ("5-4", "low to high"), ("a", "not a group"), ("5,5", "twice"),
                     ("", "names no group")):
        with pytest.raises(ConfigError, match=msg):
            parse_groups(bad)
    rc = main(["finetune", "--run", str(run_dir), "--from", "robust_eps9", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("robsal: error: model 'robust_eps9' is not in") and "robust_eps4" in err
    rc = main(["finetune", "--run", str(run_dir), "--from", "robust_eps4", "--lr", "0"])
    assert rc == 2 and capsys.readouterr().err.strip() == "robsal: error: --lr must be > 0, got 0"


def test_library_errors_name_settings_and_the_cli_names_flags(run_dir, capsys):
    from robsal.cli import main
    from robsal.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^finetune lr must be >= 0, got -1$"):
        FinetuneSettings(lr=-1).check()
    with pytest.raises(ConfigError, match=r"^finetune lr_patience must be >= 1, got 0$"):
        run_finetune(run_dir, "robust_eps4", [(5,)], settings=FinetuneSettings(lr_patience=0))
    with pytest.raises(ConfigError, match=r"^finetune groups '6' must name groups between 1 and 5"):
        parse_groups("6")
    rc = main(["finetune", "--run", str(run_dir), "--from", "robust_eps4", "--groups", "6"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "robsal: error: --groups '6' must name groups between 1 and 5, low to high"
    rc = main(["finetune", "--run", str(run_dir), "--from", "robust_eps4", "--lr-patience", "0"])
    assert rc == 2 and capsys.readouterr().err.strip() == "robsal: error: --lr-patience must be >= 1, got 0"
