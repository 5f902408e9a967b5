"""Issue 3: on the tiny built-in synthetic data, adversarial training beats standard training under PGD.

A small CNN (TinyCNN) instead of ResNet-18 keeps this to seconds; both models start
from the same weights and see the same batches (same seed), only the adversary differs.
"""

from __future__ import annotations

import torch

from robsal.config import PhaseConfig, load_config
from robsal.data import prepare
from robsal.training import fit, robust_accuracy
from robsal.training.loop import Adversary
from robsal.training.plan import TrainPlan

from .conftest import TinyCNN

CPU = torch.device("cpu")


def test_adversarial_training_on_tiny_synthetic_data_beats_standard_under_pgd(tmp_path):
    cfg = load_config("tiny", ["device=cpu", "augment.enabled=false", "data.train_per_class=30",
                              "data.test_per_class=30", "data.synth.n=180"])
    data = prepare(cfg, tmp_path / "run", progress=False)
    cfg.train.phase1 = PhaseConfig(epochs=0, batch_size=8, lr=1e-2)
    cfg.train.phase2 = PhaseConfig(epochs=8, batch_size=8, lr=1e-2)
    eps = cfg.eps_l2(4.0)  # the paper's eps = 4 at 224 px, scaled to 32 px
    test = data.indices("test")
    acc = {}
    for name, adv in (("standard", None), ("robust", Adversary(eps, steps=7))):
        torch.manual_seed(0)
        model = TinyCNN(width=16)
        plan = TrainPlan.from_config(cfg, [("phase2", cfg.train.phase2)], data.indices("train"), seed=0, device=CPU,
                                     adversary=adv, progress=False)
        fit(model, data, plan)
        acc[name] = robust_accuracy(model, data, test, {"0": 0.0, "4": eps}, device=CPU, steps=10, progress=False)
    # seeds 0-3 gave robust - standard = +0.17, +0.13, +0.21, +0.14 at eps 4 (84 test images)
    assert acc["robust"]["4"] > acc["standard"]["4"], acc
