"""Training loop: determinism, phases, lr schedule, shared data order, adversarial vs standard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robsal.config import PhaseConfig, load_config
from robsal.data import PreparedData
from robsal.training import fit, robust_accuracy
from robsal.training.loop import Adversary
from robsal.training.plan import TrainPlan

from .conftest import TinyCNN

CPU = torch.device("cpu")


def cfg_for(**phase2):
    cfg = load_config("tiny", ["device=cpu"])
    cfg.train.phase1 = PhaseConfig(epochs=1, batch_size=16, lr=1e-2, trainable="head")
    cfg.train.phase2 = PhaseConfig(**{"epochs": 2, "batch_size": 16, "lr": 1e-2, "trainable": "all", **phase2})
    return cfg


def plan_of(cfg, phases, idx, **options):
    """A quiet CPU training plan."""
    return TrainPlan.from_config(cfg, phases, idx, device=CPU, progress=False, **options)


def phases(cfg):
    return [("phase1", cfg.train.phase1), ("phase2", cfg.train.phase2)]


def test_same_seed_gives_identical_weights(toy_data):
    cfg = cfg_for()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyCNN()
        fit(model, toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=3,
                                     adversary=Adversary(0.3, steps=2)))
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    torch.manual_seed(0)
    other = TinyCNN()
    fit(other, toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=4,
                                 adversary=Adversary(0.3, steps=2)))
    assert not torch.equal(other.fc.weight, states[0]["fc.weight"])  # the seed matters


def test_phase1_trains_only_the_head(toy_data):
    cfg = cfg_for()
    torch.manual_seed(0)
    model = TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = fit(model, toy_data, plan_of(cfg, [("phase1", cfg.train.phase1)], toy_data.indices("train"), seed=0))
    after = model.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    for k in before:
        if k.startswith("features.") and "running" not in k and "num_batches" not in k:
            assert torch.equal(before[k], after[k]), k
    assert all(p.requires_grad for p in model.parameters())  # restored after training
    assert [h["phase"] for h in hist] == ["phase1"]


def test_frozen_bn_eval_keeps_running_statistics_of_frozen_layers(toy_data):
    cfg = cfg_for()
    for frozen_bn_eval in (False, True):
        torch.manual_seed(0)
        model = TinyCNN()
        before = model.features[1].running_mean.clone()
        fit(model, toy_data, plan_of(cfg, [("phase1", cfg.train.phase1)], toy_data.indices("train"), seed=0,
                                     frozen_bn_eval=frozen_bn_eval))
        unchanged = torch.equal(before, model.features[1].running_mean)
        # the paper's phase 1 lets the frozen layer's statistics drift; fine-tuning keeps them
        assert unchanged is frozen_bn_eval
    # a trainable BatchNorm layer still updates its statistics with frozen_bn_eval
    torch.manual_seed(0)
    model = TinyCNN()
    before = model.features[1].running_mean.clone()
    fit(model, toy_data, plan_of(cfg, [("phase2", cfg.train.phase2)], toy_data.indices("train"), seed=0,
                                 frozen_bn_eval=True))
    assert not torch.equal(before, model.features[1].running_mean)


def test_lr_decays_after_the_listed_epochs(toy_data):
    cfg = cfg_for(epochs=4, lr=1e-2, lr_decay_epochs=[1, 3], lr_decay=0.5)
    torch.manual_seed(0)
    hist = fit(TinyCNN(), toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=0,
                                            val_idx=toy_data.indices("val"), train_eval_idx=toy_data.indices("train")[:8]))
    assert [h["lr"] for h in hist] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3])
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    assert [h["phase"] for h in hist] == ["phase1"] + ["phase2"] * 4
    for h in hist:
        for key in ("train_loss", "train_accuracy", "val_accuracy", "epoch_seconds", "images_per_second"):
            assert h[key] is not None and np.isfinite(h[key]), key
        assert h["adv_train_accuracy"] is None
        assert h["images_per_second"] == pytest.approx(60 / h["epoch_seconds"])


def test_standard_and_robust_models_see_the_same_batches(toy_data):
    """Same seed -> same data order and the same augmentation draws for every model."""
    cfg = cfg_for()
    seen: dict[str, list[float]] = {}
    for name, adv in (("standard", None), ("robust", Adversary(0.5, steps=2))):
        log: list[float] = []

        def augment(x, generator=None, log=log):
            noise = torch.rand(x.shape[0], generator=generator, device=x.device)
            log.extend((x.flatten(1).sum(1) + noise).tolist())
            return x

        torch.manual_seed(0)
        fit(TinyCNN(), toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=0, adversary=adv,
                                        augment=augment))
        seen[name] = log
    assert len(seen["standard"]) == 3 * len(toy_data.indices("train"))
    assert seen["standard"] == seen["robust"]


def test_resuming_at_an_epoch_equals_an_uninterrupted_run(toy_data):
    """What tune relies on: phase 2 started from a saved phase-1 state gives the same weights."""
    cfg = cfg_for()
    idx = toy_data.indices("train")
    torch.manual_seed(0)
    full = TinyCNN()
    fit(full, toy_data, plan_of(cfg, phases(cfg), idx, seed=1))
    torch.manual_seed(0)
    split = TinyCNN()
    fit(split, toy_data, plan_of(cfg, [("phase1", cfg.train.phase1)], idx, seed=1))
    fit(split, toy_data, plan_of(cfg, [("phase2", cfg.train.phase2)], idx, seed=1, start_epoch=cfg.train.phase1.epochs))
    for (k, a), b in zip(full.state_dict().items(), split.state_dict().values()):
        assert torch.equal(a, b), k


def shortcut_data(n: int = 30, n_test: int = 30, size: int = 16, seed: int = 0, flip: float = 0.2) -> PreparedData:
    """A weakly predictive but large (robust) cue plus a perfectly predictive, tiny (non-robust) one."""
    rng = np.random.default_rng(seed)
    imgs, labels, rows = [], [], []
    for split, per in (("train", n), ("test", n_test)):
        for k in range(3):
            for i in range(per):
                img = 0.5 + 0.1 * rng.standard_normal((3, size, size))
                kk = k if rng.random() > flip else rng.integers(3)
                q = size // 4
                img[kk, q : size - q, q : size - q] += 0.25  # robust cue, right 80 % + chance
                img[:, :2, :2] = 0.5
                img[k, :2, :2] += 0.1  # non-robust cue: always right, L2 distance 0.28
                imgs.append(np.clip(img * 255, 0, 255).astype(np.uint8))
                labels.append(k)
                iid = f"{split}{k}_{i}"
                rows.append({"image_id": iid, "lesion_id": iid, "label": "abc"[k], "split": split, "fold": pd.NA})
    return PreparedData(np.stack(imgs), np.asarray(labels), list("abc"), pd.DataFrame(rows))


def test_adversarial_training_beats_standard_training_under_pgd():
    data = shortcut_data()
    cfg = cfg_for()
    cfg.train.phase1.epochs = 0
    cfg.train.phase2 = PhaseConfig(epochs=6, batch_size=15, lr=2e-2)
    test = data.indices("test")
    acc = {}
    for name, adv in (("standard", None), ("robust", Adversary(0.5, steps=4))):
        torch.manual_seed(0)
        model = TinyCNN()
        fit(model, data, plan_of(cfg, phases(cfg), data.indices("train"), seed=0, adversary=adv))
        acc[name] = robust_accuracy(model, data, test, {"0": 0.0, "1": 1.0}, device=CPU, steps=10, progress=False)
    assert acc["standard"]["0"] > 0.6 and acc["robust"]["0"] > 0.6  # both learned the task
    assert acc["robust"]["1"] > acc["standard"]["1"] + 0.2, acc


def test_a_plateau_stop_policy_ends_training_and_keeps_the_best_weights(toy_data):
    """fit(stop=Plateau): events from the validation loss, lr x factor on reduce_lr, best weights at the end."""
    from robsal.training.evaluate import mean_loss
    from robsal.training.stopping import Plateau

    cfg = cfg_for(epochs=12, lr=0.5)  # large steps: the validation loss stops falling (epoch 9 of 12)
    val = toy_data.indices("val")
    torch.manual_seed(0)
    model = TinyCNN()
    plateau = Plateau(patience=3, lr_patience=1, lr_factor=0.5)
    hist = fit(model, toy_data, plan_of(cfg, [("phase2", cfg.train.phase2)], toy_data.indices("train"), seed=0,
                                        val_idx=val), stop=plateau)
    replay = Plateau(patience=3, lr_patience=1)
    assert [h["event"] for h in hist] == [replay.step(h["val_loss"]) for h in hist]
    assert hist[-1]["event"] == "stop" and len(hist) < 12 and plateau.stopped == "early"
    for a, b in zip(hist, hist[1:]):  # the lr of the next epoch
        assert b["lr"] == pytest.approx(a["lr"] * (0.5 if a["event"] == "reduce_lr" else 1.0))
    best = min(range(len(hist)), key=lambda i: hist[i]["val_loss"])
    assert plateau.best_epoch == hist[best]["epoch"] and plateau.best == hist[best]["val_loss"]
    # the model ends with the weights of the best epoch: its validation loss is that epoch's, exactly
    assert mean_loss(model, toy_data, val, device=CPU, batch_size=cfg.train.eval_batch_size) == plateau.best
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="checkpoint"):
        fit(model, toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=0, val_idx=val,
                                     checkpoint_dir=Path("unused")), stop=Plateau())
    with pytest.raises(ValueError, match="val_idx"):
        fit(model, toy_data, plan_of(cfg, phases(cfg), toy_data.indices("train"), seed=0), stop=Plateau())
