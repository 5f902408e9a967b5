"""``train.compile: true``: torch.compile'd training and attack forward passes give the eager weights.

One short adversarial epoch of a tiny CNN on the CPU (TorchInductor, which compiles C++),
compiled vs eager: same weights to float tolerance, and what is saved (the model's
``state_dict`` and the epoch checkpoint) has the original keys, without ``_orig_mod.``.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from robsal.config import PhaseConfig, load_config
from robsal.training import fit
from robsal.training.checkpoint import LATEST, read_checkpoint
from robsal.training.loop import Adversary
from robsal.training.plan import TrainPlan

from .conftest import TinyCNN, make_toy_data

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile on the CPU (TorchInductor) needs a C++ compiler; neither g++ nor clang++ was found",
)


def train(compile_: bool, tmp_path, data):
    cfg = load_config("tiny", ["device=cpu", f"train.compile={'true' if compile_ else 'false'}"])
    assert cfg.train.compile is compile_
    torch.manual_seed(0)
    model = TinyCNN()
    model.features[0].bias = None  # no bias before BatchNorm (its gradient is rounding noise; see test_ddp)
    # 12 images in two batches of 6 (one shape: no recompilation for a last partial batch)
    phase = PhaseConfig(epochs=1, batch_size=6, lr=1e-2, trainable="all")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plan = TrainPlan.from_config(
        cfg, [("phase2", phase)], data.indices("train"), seed=2, device=CPU, adversary=Adversary(0.5, steps=2),
        progress=False, checkpoint_dir=tmp_path / f"ck{int(compile_)}", fingerprint="compile-test",
    )
    history = fit(model, data, plan)
    graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return model, history, graphs


def test_compiled_training_equals_eager(tmp_path):
    data = make_toy_data(n_train=4, n_test=1, n_val=1, size=16, seed=3)
    torch.manual_seed(0)
    init = TinyCNN().state_dict()
    eager, h_eager, g_eager = train(False, tmp_path, data)
    compiled, h_comp, g_comp = train(True, tmp_path, data)
    assert g_eager == 0 and g_comp >= 1  # the compiled run did go through torch.compile
    assert isinstance(compiled, TinyCNN)  # fit compiles a wrapper; the model itself stays as built
    ref, got = eager.state_dict(), compiled.state_dict()
    assert list(got) == list(ref) and not any("_orig_mod" in k for k in got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-5, msg=k)
    assert float((ref["fc.weight"] - init["fc.weight"]).abs().max()) > 1e-3  # it did train
    assert h_comp[0]["train_loss"] == pytest.approx(h_eager[0]["train_loss"], rel=1e-5)
    ck = read_checkpoint(tmp_path / "ck1" / LATEST)
    assert sorted(ck.group("model")) == sorted(ref)
    for k in ref:
        torch.testing.assert_close(ck.group("model")[k], got[k], rtol=0, atol=0)
    print(f"torch.compile graphs for one adversarial epoch: {g_comp}")
