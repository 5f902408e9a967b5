"""The input-gradient view (robsal.models.input_gradient) gives the plain model's results.

* the view of a ResNet: bitwise the same forward, the same parameters and buffers, the
  input gradient within 1e-5 of its maximum;
* each stand-in against the module it replaces (values, gradients, ties and NaN in max
  pooling);
* layers the view must keep (deeper convolutions, training-mode BatchNorm, subclasses,
  hooked modules);
* ``input_gradient_mode`` restores every submodule's mode and every parameter's flag.

The maps of ``explain(fast=True)`` against ``fast=False`` are in
tests/saliency/test_fast_paths.py; PGD through the view in tests/attacks/test_pgd_fast.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robsal.models import build_model
from robsal.models.input_gradient import frozen_parameters, input_gradient_mode, input_gradient_view


def assert_maps_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """|a - b| <= rel x max|b| for every map (image) of (N, C, H, W)."""
    scale = b.abs().amax(dim=(1, 2, 3))
    assert (scale > 0).all()
    err = (a - b).abs().amax(dim=(1, 2, 3)) / scale
    assert err.max().item() <= rel, err


@pytest.fixture(scope="module")
def resnet32():
    torch.manual_seed(0)
    return build_model("resnet18", ["a", "b", "c"], image_size=32).eval()


@pytest.fixture(scope="module")
def images32() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))


def test_view_replaces_layers_shares_parameters_and_computes_the_same_forward(resnet32, images32):
    view = input_gradient_view(resnet32)
    kinds = [type(m).__name__ for m in view.modules()]
    assert kinds.count("_EvalBatchNorm") == sum(isinstance(m, nn.BatchNorm2d) for m in resnet32.modules()) == 20
    assert kinds.count("_ChannelsLastMaxPool") == 1 and kinds.count("_ImageConv") == 1  # the stem
    assert type(view.net.layer3[1].bn2).__name__ == "_EvalBatchNorm" and type(view.net.conv1).__name__ == "_ImageConv"
    # the caller's model is untouched and shares every tensor with the view
    assert type(resnet32.net.bn1) is nn.BatchNorm2d and type(resnet32.net.maxpool) is nn.MaxPool2d
    assert view.net.conv1.conv is resnet32.net.conv1 and view.net.layer1[0].conv1 is resnet32.net.layer1[0].conv1
    x = images32.clone().requires_grad_(True)
    out_view = view(x)
    out_model = resnet32(images32)
    assert torch.equal(out_view, out_model)  # bitwise: no ReLU / max-pool decision can flip
    (g_view,) = torch.autograd.grad(out_view[:, 1].sum(), x)
    x2 = images32.clone().requires_grad_(True)
    (g_model,) = torch.autograd.grad(resnet32(x2)[:, 1].sum(), x2)
    assert_maps_close(g_view, g_model)
    # the view's parameters and state are the model's own tensors
    assert [id(p) for p in view.parameters()] == [id(p) for p in resnet32.parameters()]
    assert sorted(id(b) for b in view.buffers()) == sorted(id(b) for b in resnet32.buffers())
    # a view of a view is the view (no stand-in wraps a stand-in)
    again = input_gradient_view(view)
    assert again.net.bn1 is view.net.bn1 and again.net.maxpool is view.net.maxpool


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.MaxPool2d((3, 2), stride=(2, 1), ceil_mode=True),
        nn.MaxPool2d(2, dilation=2),
    ],
)
def test_max_pool_stand_in_is_exact_with_ties_and_nan(pool):
    """Integer-valued inputs tie in almost every window; both kernels must keep the same
    (first) maximum, so values and gradients are bitwise equal."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 5, 11, 13), generator=g).float()
    x[0, 1, 2, 3] = float("nan")
    view = input_gradient_view(nn.Sequential(pool))
    assert type(view[0]).__name__ == "_ChannelsLastMaxPool"
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = view(xa), pool(xb)
    assert ya.is_contiguous() and torch.equal(ya.nan_to_num(-1), yb.nan_to_num(-1))
    w = torch.randn(ya.shape, generator=g)
    (ga,) = torch.autograd.grad((ya.nan_to_num(0) * w).sum(), xa)
    (gb,) = torch.autograd.grad((yb.nan_to_num(0) * w).sum(), xb)
    assert ga.is_contiguous() and torch.equal(ga, gb)
    assert (gb != 0).sum() > 10


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        nn.Conv2d(1, 4, (3, 5), stride=(1, 2), padding=(1, 2)),
        nn.Conv2d(4, 6, 3),
    ],
)
def test_image_conv_stand_in(conv):
    torch.manual_seed(0)
    x = torch.rand(3, conv.in_channels, 17, 19)
    view = input_gradient_view(nn.Sequential(conv))
    assert type(view[0]).__name__ == "_ImageConv"
    for p in conv.parameters():
        p.requires_grad_(False)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = view(xa), conv(xb)
    assert torch.equal(ya, yb)
    w = torch.randn(ya.shape)
    (ga,) = torch.autograd.grad((ya * w).sum(), xa)
    (gb,) = torch.autograd.grad((yb * w).sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_layers_the_view_keeps():
    """Deeper convolutions, training-mode or statistics-free BatchNorm, subclasses and
    hooked modules keep their own forward."""

    class MyBN(nn.BatchNorm2d):
        pass

    hooked = nn.MaxPool2d(2)
    hooked.register_forward_hook(lambda *a: None)
    bn_train = nn.BatchNorm2d(3).train()
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3), bn_train, nn.BatchNorm2d(3, track_running_stats=False).eval(), MyBN(3).eval(), hooked
    )
    view = input_gradient_view(model)
    assert all(v is m for v, m in zip(view, model))


@pytest.mark.parametrize("affine", [True, False])
def test_eval_batch_norm_stand_in(affine):
    g = torch.Generator().manual_seed(0)
    for bn, shape in ((nn.BatchNorm2d(5, affine=affine), (4, 5, 6, 7)), (nn.BatchNorm1d(5, affine=affine), (4, 5))):
        bn.running_mean.copy_(torch.randn(5, generator=g))
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.1)
        if affine:
            nn.init.normal_(bn.weight)
            nn.init.normal_(bn.bias)
            bn.requires_grad_(False)
        bn.eval()
        view = input_gradient_view(nn.Sequential(bn))
        assert type(view[0]).__name__ == "_EvalBatchNorm"
        x = torch.randn(shape, generator=g)
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        ya, yb = view(xa), bn(xb)
        assert torch.equal(ya, yb)
        w = torch.randn(shape, generator=g)
        (ga,) = torch.autograd.grad((ya * w).sum(), xa)
        (gb,) = torch.autograd.grad((yb * w).sum(), xb)
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)

def test_input_gradient_mode_restores_every_submodule_and_parameter():
    """Eval mode and frozen parameters inside; after (also on error) each submodule's own
    mode (a BatchNorm kept in eval mode during fine-tuning stays so) and each flag."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)).train()
    model[1].eval()  # frozen statistics, as fit(frozen_bn_eval=True) leaves it
    model[0].bias.requires_grad_(False)  # a caller's frozen parameter stays frozen
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    assert modes == [True, True, False, True, True] and flags == [True, False, True, True]
    with input_gradient_mode(model) as view:
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        assert type(view[1]).__name__ == "_EvalBatchNorm" and view[0] is not model[0]  # the stem stand-in
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(RuntimeError, match="boom"), input_gradient_mode(model, view=False) as same:
        assert same is model
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    with frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
