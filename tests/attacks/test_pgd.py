"""PGD: norm ball, [0, 1] box, identity at eps=0, loss ascent, side-effect freedom, torchattacks oracle."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from robsal.attacks import pgd


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def batch(n: int = 16, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[: n // 4] = x[: n // 4].round()  # some samples sit on the box faces 0 and 1
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _warm_bn(model: nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 3, 16, 16) * 0.7 + 0.1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("eps", [0.05, 0.5, 3.0])
def test_output_in_ball_and_box(norm, eps):
    model = small_cnn()
    x, y = batch()
    adv = pgd(model, x, y, eps=eps, norm=norm, steps=5, step_size=eps * 0.5)
    d = (adv - x).flatten(1)
    if norm == "l2":
        assert (d.norm(dim=1) <= eps + 1e-5).all()
    else:
        assert (d.abs().amax(dim=1) <= eps + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (d.abs().sum(1) > 0).all()  # every sample actually moved


def test_l2_uses_the_ball_when_unconstrained_by_box():
    """Away from the box faces, 7 steps of eps/5 reach the sphere: ||delta|| == eps."""
    model = small_cnn()
    x = 0.4 + 0.2 * torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(8, dtype=torch.long)
    adv = pgd(model, x, y, eps=0.3, random_start=False)
    assert torch.allclose((adv - x).flatten(1).norm(dim=1), torch.full((8,), 0.3), atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_zero_is_identity(norm):
    model = small_cnn()
    x, y = batch()
    adv = pgd(model, x, y, eps=0.0, norm=norm)
    assert torch.equal(adv, x)
    assert adv.data_ptr() != x.data_ptr()


def test_loss_increases_for_nearly_all_samples():
    model = small_cnn()
    _warm_bn(model)
    model.eval()
    x, y = batch(n=64)
    adv = pgd(model, x, y, eps=0.5)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(adv), y, reduction="none")
    assert (attacked > clean).float().mean() >= 0.95
    # a random start alone (no gradient steps) raises the loss far less
    rand = pgd(model, x, y, eps=0.5, steps=0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        noise = F.cross_entropy(model(rand), y, reduction="none")
    assert (attacked - clean).mean() > 5 * (noise - clean).abs().mean()


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_grads_and_bn_buffers_unchanged(training):
    model = small_cnn()
    _warm_bn(model)
    model.train(training)
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.25)  # a pre-existing gradient must survive
    params[-1].requires_grad_(False)  # a frozen parameter must stay frozen
    flags = [p.requires_grad for p in params]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = batch()
    pgd(model, x, y, eps=0.5, steps=3)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert [p.requires_grad for p in params] == flags
    assert torch.equal(params[0].grad, torch.full_like(params[0], 0.25))
    assert all(p.grad is None for p in params[1:])
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k  # running_mean/var and num_batches_tracked
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_a_batch_norm_kept_in_eval_mode_stays_in_eval_mode():
    """Fine-tuning keeps frozen BatchNorm layers in eval mode inside a training model;
    the attack restores each submodule's own mode, not the model's mode everywhere."""
    model = small_cnn()
    _warm_bn(model)
    model.train()
    model[1].eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = batch()
    pgd(model, x, y, eps=0.5, steps=2)
    assert [m.training for m in model.modules()] == [True, True, False] + [True] * 7
    model(x)  # a training forward: the frozen layer's statistics must not move
    assert torch.equal(model[1].running_mean, buffers["1.running_mean"])
    assert not torch.equal(model[4].running_mean, buffers["4.running_mean"])


def test_attack_runs_under_no_grad_and_leaves_input_alone():
    model = small_cnn()
    x, y = batch()
    x_copy = x.clone()
    with torch.no_grad():
        adv = pgd(model, x, y, eps=0.5, steps=2)
    assert torch.equal(x, x_copy)
    assert not adv.requires_grad
    assert (adv - x).abs().sum() > 0


@pytest.mark.parametrize("steps", [1, 7])
def test_matches_torchattacks_pgdl2_without_random_start(steps):
    model = small_cnn()
    _warm_bn(model)
    x, y = batch()
    ours = pgd(model, x, y, eps=0.4, steps=steps, step_size=0.08, random_start=False)
    ref = torchattacks.PGDL2(model, eps=0.4, alpha=0.08, steps=steps, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_matches_torchattacks_pgd_linf_without_random_start():
    model = small_cnn()
    _warm_bn(model)
    x, y = batch()
    ours = pgd(model, x, y, eps=8 / 255, norm="linf", steps=3, step_size=2 / 255, random_start=False)
    ref = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_default_step_size_is_eps_over_five():
    model = small_cnn()
    x, y = batch()
    a = pgd(model, x, y, eps=0.5, steps=2, random_start=False)
    b = pgd(model, x, y, eps=0.5, steps=2, step_size=0.1, random_start=False)
    assert torch.equal(a, b)


def test_random_start_is_seeded_by_the_generator():
    model = small_cnn()
    x, y = batch()
    a = pgd(model, x, y, eps=0.5, steps=1, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, eps=0.5, steps=1, generator=torch.Generator().manual_seed(5))
    c = pgd(model, x, y, eps=0.5, steps=1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _linear_two_class(seed: int = 0):
    torch.manual_seed(seed)
    lin = nn.Linear(3 * 8 * 8, 2)
    return nn.Sequential(nn.Flatten(), lin), lin


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_optimal_attack_on_a_linear_model(norm):
    """For a 2-class linear model the best attack moves along -(w_y - w_o) (L2) or its sign
    (Linf); PGD without random start must reach exactly that point."""
    model, lin = _linear_two_class()
    g = torch.Generator().manual_seed(2)
    x = 0.4 + 0.2 * torch.rand(10, 3, 8, 8, generator=g)
    y = torch.randint(0, 2, (10,), generator=g)
    w = lin.weight.detach()  # (2, D)
    diff = (w[y] - w[1 - y]).view(10, 3, 8, 8)  # direction that raises the true-class margin
    eps = 0.05 if norm == "l2" else 0.01
    adv = pgd(model, x, y, eps=eps, norm=norm, steps=7, random_start=False)
    if norm == "l2":
        expect = x - eps * diff / diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    else:
        expect = x - eps * diff.sign()
    assert torch.allclose(adv, expect, atol=1e-5)


def test_rejects_unknown_norm():
    model = small_cnn()
    x, y = batch()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, norm="l1")
