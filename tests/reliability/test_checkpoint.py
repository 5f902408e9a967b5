"""Epoch checkpoints in-process: exact resume, damaged files, NaN guard, signals during writes, full disk."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal

import pytest
import torch

from robsal import signals
from robsal.config import PhaseConfig, load_config
from robsal.errors import CheckpointError, UserError
from robsal.io import DiskFullError, read_json, write_json
from robsal.training import checkpoint as ckpt
from robsal.training import fit
from robsal.training import train as train_mod
from robsal.training.checkpoint import LATEST, PREVIOUS, load_latest, read_checkpoint
from robsal.training.loop import Adversary, NonFiniteLoss
from robsal.training.plan import TrainPlan

from .conftest import TinyCNN, make_toy_data

CPU = torch.device("cpu")
FP = "fp-test"


def cfg_for():
    cfg = load_config("tiny", ["device=cpu"])
    cfg.train.phase1 = PhaseConfig(epochs=1, batch_size=16, lr=1e-2, trainable="head")
    # lr decay after phase-2 epoch 1: a resume that lost the scheduler state would differ
    cfg.train.phase2 = PhaseConfig(epochs=3, batch_size=16, lr=1e-2, lr_decay_epochs=[1], lr_decay=0.5,
                                   trainable="all")
    return cfg


def phases(cfg):
    return [("phase1", cfg.train.phase1), ("phase2", cfg.train.phase2)]


@pytest.fixture(scope="module")
def data():
    return make_toy_data(n_train=20, n_test=4, n_val=2, size=16)


def run_fit(data, cfg, ckpt_dir=None, history_path=None, model=None, adversary=None):
    torch.manual_seed(0)
    model = model if model is not None else TinyCNN()
    plan = TrainPlan.from_config(
        cfg, phases(cfg), data.indices("train"), seed=5, device=CPU, adversary=adversary, val_idx=data.indices("val"),
        history_path=history_path, progress=False, name="toy", checkpoint_dir=ckpt_dir, fingerprint=FP,
    )
    hist = fit(model, data, plan)
    return model, hist


@pytest.fixture(scope="module")
def reference(data):
    """Uninterrupted 4-epoch adversarial run (PGD start noise comes from the (seed, epoch) generator)."""
    model, hist = run_fit(data, cfg_for(), adversary=Adversary(0.3, steps=2))
    return model.state_dict(), hist


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def interrupt_at(monkeypatch, epoch):
    """Make train_epoch raise KeyboardInterrupt when it starts ``epoch`` (a Ctrl-C mid-run)."""
    real = train_mod.train_epoch

    def fake(*args, **kw):
        if kw["epoch"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", fake)


@pytest.mark.parametrize("stop_at", [2, 3])  # after phase 1; in phase 2 after the lr decay
def test_resume_after_an_interruption_equals_the_uninterrupted_run(data, reference, tmp_path, monkeypatch, stop_at):
    cfg = cfg_for()
    d, hp = tmp_path / "ck", tmp_path / "history.jsonl"
    with monkeypatch.context() as m:
        interrupt_at(m, stop_at)
        with pytest.raises(KeyboardInterrupt):
            run_fit(data, cfg, d, hp, adversary=Adversary(0.3, steps=2))
    assert read_checkpoint(d / LATEST).epoch == stop_at - 1
    assert len(hp.read_text().splitlines()) == stop_at - 1
    model, hist = run_fit(data, cfg, d, hp, model=TinyCNN(), adversary=Adversary(0.3, steps=2))
    assert_same_weights(model.state_dict(), reference[0])
    ref_hist = reference[1]
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]  # bit-equal floats
    assert [h["lr"] for h in hist] == [0.01, 0.01, 0.005, 0.005]
    written = [json.loads(line) for line in hp.read_text().splitlines()]
    assert [h["epoch"] for h in written] == [1, 2, 3, 4]
    assert list(written[0]) == list(ref_hist[0])  # records keep their key order through the checkpoint


def test_checkpoint_holds_the_whole_training_state(data, tmp_path):
    cfg = cfg_for()
    model, _ = run_fit(data, cfg, tmp_path)
    latest, prev = read_checkpoint(tmp_path / LATEST), read_checkpoint(tmp_path / PREVIOUS)
    assert (latest.epoch, prev.epoch) == (4, 3)
    s = latest.state
    assert (s["phase"], s["phase_index"], s["phase_epoch"]) == ("phase2", 1, 3)
    assert s["plan"] == [["phase1", 1], ["phase2", 3]] and s["fingerprint"] == FP
    assert len(s["history"]) == 4 and s["scheduler"]["last_epoch"] == 3
    assert_same_weights(latest.group("model"), model.state_dict())
    n_params = len(list(model.parameters()))
    assert {k.split("/")[1] for k in latest.tensors if k.startswith("optimizer/")} == {str(i) for i in range(n_params)}
    assert {"rng/torch", "rng/numpy", "rng/python"} <= set(latest.tensors)
    # the global RNG states are those of the end of training
    assert torch.equal(latest.tensors["rng/torch"], torch.get_rng_state())


def damage(path, how):
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "bitflip":  # same size, one byte of tensor data changed
        b = bytearray(raw)
        b[-100] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "bitflip", "empty"])
def test_a_damaged_latest_checkpoint_is_detected_and_the_previous_used(data, reference, tmp_path, monkeypatch, how):
    cfg = cfg_for()
    d = tmp_path / "ck"
    with monkeypatch.context() as m:
        interrupt_at(m, 4)
        with pytest.raises(KeyboardInterrupt):
            run_fit(data, cfg, d, adversary=Adversary(0.3, steps=2))
    damage(d / LATEST, how)  # epoch 3 is damaged; previous holds epoch 2
    with pytest.raises(CheckpointError, match="truncated|sha256"):
        read_checkpoint(d / LATEST)
    with pytest.warns(UserWarning, match=r"latest\.safetensors .*resuming from previous\.safetensors \(epoch 2\)"):
        model, hist = run_fit(data, cfg, d, model=TinyCNN(), adversary=Adversary(0.3, steps=2))
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert_same_weights(model.state_dict(), reference[0])  # epochs 3 and 4 redone exactly


def test_both_checkpoints_damaged_or_foreign_start_from_scratch(data, tmp_path):
    cfg = cfg_for()
    run_fit(data, cfg, tmp_path)
    damage(tmp_path / LATEST, "truncated")
    damage(tmp_path / PREVIOUS, "bitflip")
    with pytest.warns(UserWarning, match="no usable checkpoint, training from the start"):
        assert load_latest(tmp_path, fingerprint=FP) is None
    with pytest.warns(UserWarning, match="no usable checkpoint"):
        run_fit(data, cfg, tmp_path)  # a fresh run replaces them
    assert read_checkpoint(tmp_path / LATEST).epoch == 4
    with pytest.warns(UserWarning, match="another training configuration"):
        assert load_latest(tmp_path, fingerprint="other") is None


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_posing_as_a_checkpoint_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "ck"
    d.mkdir()
    (d / LATEST).write_bytes(pickle.dumps({"model": _Evil(marker)}))
    torch.save({"model": _Evil(marker)}, d / PREVIOUS)
    with pytest.warns(UserWarning, match="not a safetensors file"):
        assert load_latest(d, fingerprint=FP) is None
    assert not marker.exists()
    pickle.loads((d / LATEST).read_bytes())["model"].close()  # the payload is live: plain unpickling runs it
    assert marker.exists()


class NaNAt(TinyCNN):
    """TinyCNN whose ``k``-th training-mode forward pass (1-based) returns NaN logits."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.k:
                out = out * float("nan")
        return out


def test_nan_loss_stops_training_naming_model_epoch_and_batch(data, tmp_path):
    cfg = cfg_for()
    d, hp = tmp_path / "ck", tmp_path / "history.jsonl"
    # 60 train images, batch 16 -> 4 batches per epoch; call 7 = epoch 2, batch 3
    with pytest.raises(NonFiniteLoss) as e:
        run_fit(data, cfg, d, hp, model=NaNAt(7))
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert msg.startswith("toy: training loss is nan at epoch 2, batch 3 of 4 (phase2 epoch 1/3)")
    assert "last good checkpoint (epoch 1)" in msg and "train.phase2.lr" in msg
    assert (e.value.epoch, e.value.batch) == (2, 3)
    kept = read_checkpoint(d / LATEST)
    assert kept.epoch == 1 and not (d / PREVIOUS).exists()
    assert all(torch.isfinite(t).all() for t in kept.group("model").values())
    assert len(hp.read_text().splitlines()) == 1


def test_nan_found_at_the_end_of_the_epoch_names_the_same_batch(data, tmp_path, monkeypatch):
    """The accelerator path (first bad batch kept on the device, read once per epoch), run on the CPU."""
    from robsal.training import loop

    monkeypatch.setattr(loop, "HOST_CHECKED", frozenset())
    with pytest.raises(NonFiniteLoss, match=r"^toy: training loss is nan at epoch 2, batch 3 of 4 .*epoch 1\)"):
        run_fit(data, cfg_for(), tmp_path / "ck", model=NaNAt(7))
    assert read_checkpoint(tmp_path / "ck" / LATEST).epoch == 1


def test_nan_in_the_first_epoch_says_nothing_was_saved(data, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, batch 1 of 4 .*nothing was saved"):
        run_fit(data, cfg_for(), tmp_path / "ck", model=NaNAt(1))


def test_signals_are_held_during_a_checkpoint_write(data, tmp_path, monkeypatch, request):
    """SIGTERM / SIGINT arriving mid-write: the file is finished, then the signal acts."""
    cfg = cfg_for()
    run_fit(data, cfg, tmp_path)  # latest = epoch 4, previous = epoch 3
    ck = read_checkpoint(tmp_path / LATEST)
    real_save = ckpt.save_safetensors
    # A process started in the background by a non-interactive shell inherits SIGINT ignored
    # (POSIX); give it Python's usual Ctrl-C handler for this test.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, old_int))

    for sig, exc in ((signal.SIGTERM, signals.Terminated), (signal.SIGINT, KeyboardInterrupt)):
        def save_with_signal(tensors, filename, metadata=None, sig=sig):
            os.kill(os.getpid(), sig)  # delivered while the checkpoint is half-written
            real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(ckpt, "save_safetensors", save_with_signal)
        state = {**ck.state, "epoch": 99}
        with signals.handle_termination(), pytest.raises(exc):
            ckpt.write_checkpoint(tmp_path, ck.tensors, state)
        assert read_checkpoint(tmp_path / LATEST).epoch == 99  # complete and verified
        assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, PREVIOUS]  # no temporaries


def test_deferred_delivers_each_signal_after_the_block():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    done = []
    with signals.handle_termination():
        with pytest.raises(signals.Terminated):
            with signals.deferred() as held:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("finished")
                assert held == [signal.SIGTERM, signal.SIGTERM]
    assert done == ["finished"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_disk_full_mid_write_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    cfg = cfg_for()
    run_fit(data, cfg, tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in (LATEST, PREVIOUS)}
    ck = read_checkpoint(tmp_path / LATEST)

    def half_then_enospc(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_safetensors", half_then_enospc)
    with pytest.raises(DiskFullError) as e:
        ckpt.write_checkpoint(tmp_path, ck.tensors, ck.state)
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)
    msg = str(e.value)
    assert "\n" not in msg and "no space left" in msg and str(tmp_path / LATEST) in msg and "intact" in msg
    assert {n: (tmp_path / n).read_bytes() for n in (LATEST, PREVIOUS)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, PREVIOUS]


def test_disk_full_at_fsync_keeps_every_json_output(tmp_path, monkeypatch):
    write_json(tmp_path / "model.json", {"v": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("robsal.io.os.fsync", no_space)
    with pytest.raises(DiskFullError, match="model.json"):
        write_json(tmp_path / "model.json", {"v": 2})
    monkeypatch.undo()
    assert read_json(tmp_path / "model.json") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_restored_adam_moments_follow_the_parameters_memory_format(data, tmp_path):
    """GPU training keeps conv weights channels_last; checkpoints store plain contiguous tensors."""
    from robsal.training.checkpoint import restore_optimizer, save_training_state
    from robsal.training.phases import make_optimizer, make_scheduler

    cfg = cfg_for()
    model = TinyCNN().to(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), cfg.train.phase2, cfg.train.betas, cfg.train.weight_decay)
    sch = make_scheduler(opt, cfg.train.phase2)
    model(torch.rand(4, 3, 16, 16).to(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    sch.step()
    save_training_state(tmp_path, model=model, optimizer=opt, scheduler=sch, history=[], fingerprint=FP,
                        position={"epoch": 1, "phase_index": 1, "phase": "phase2", "phase_epoch": 1,
                                  "plan": [], "start_epoch": 0})
    opt2 = make_optimizer(list(model.parameters()), cfg.train.phase2, cfg.train.betas, cfg.train.weight_decay)
    sch2 = make_scheduler(opt2, cfg.train.phase2)
    restore_optimizer(opt2, sch2, read_checkpoint(tmp_path / LATEST))
    conv = model.features[0].weight
    assert not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            a, b = opt.state[p][k], opt2.state[p][k]
            assert torch.equal(a, b) and b.stride() == p.stride(), k
        assert torch.equal(opt.state[p]["step"], opt2.state[p]["step"])
    assert sch2.state_dict() == sch.state_dict() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
