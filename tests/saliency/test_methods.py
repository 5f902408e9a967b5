"""Saliency methods: numbers against autograd, closed forms, axioms and reference code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robsal.errors import ConfigError
from robsal.saliency import (
    METHODS,
    explain,
    integrated_gradients_with_delta,
    make_baseline,
    reduce_channels,
    scaled_occlusion_geometry,
)

from robsal.saliency.seeds import image_generators, per_image_seeds

from .conftest import Linear, RegionModel, hook_count

FAST = {
    "integrated_gradients": {"n_steps": 4},
    "integrated_gradients_uniform": {"n_steps": 4},
    "integrated_gradients_gaussian": {"n_steps": 4},
    "smoothgrad": {"n_samples": 3},
    "smoothgrad_sq": {"n_samples": 3},
}


def test_unknown_method_lists_known_ones(small_cnn, images):
    with pytest.raises(ConfigError) as err:
        explain(small_cnn, images, None, "lime")
    for name in ("gradient", "integrated_gradients_gaussian", "occlusion", "gradcam"):
        assert name in str(err.value)


def test_unknown_option_is_named(small_cnn, images):
    with pytest.raises(ConfigError, match="n_stepz"):
        explain(small_cnn, images, None, "integrated_gradients", n_stepz=3)


def test_gradient_equals_autograd(small_cnn, images):
    targets = torch.tensor([0, 1, 2, 1])
    attr = explain(small_cnn, images, targets, "gradient")
    x = images.clone().requires_grad_(True)
    out = small_cnn(x)
    (grad,) = torch.autograd.grad(out[torch.arange(4), targets].sum(), x)
    assert attr.shape == images.shape
    torch.testing.assert_close(attr, grad, rtol=1e-5, atol=1e-7)
    assert grad.abs().max() > 1e-4  # not a trivially zero comparison
    # input x gradient is the elementwise product
    torch.testing.assert_close(explain(small_cnn, images, targets, "input_x_gradient"), images * grad)


def test_target_none_explains_the_prediction(small_cnn, images):
    pred = small_cnn(images).argmax(1)
    torch.testing.assert_close(explain(small_cnn, images, None, "gradient"), explain(small_cnn, images, pred, "gradient"))
    other = (pred + 1) % 3
    assert not torch.allclose(explain(small_cnn, images, other, "gradient"), explain(small_cnn, images, pred, "gradient"))


@pytest.mark.parametrize("baseline", ["uniform", "gaussian", "black", "blur"])
def test_integrated_gradients_completeness(smooth_cnn, images, baseline):
    """sum of attributions = f(x) - f(baseline) within 1 % at 200 steps (Sundararajan et al.).

    A smooth (GELU) small CNN: with ReLUs the integrand jumps at every kink on the path
    and the quadrature error at 200 steps reached 4 % for the gaussian baseline (it is
    < 0.2 % at 1000 steps); the axiom itself is the same.
    """
    model = smooth_cnn
    targets = torch.tensor([0, 1, 2, 0])
    attr, delta = integrated_gradients_with_delta(model, images, targets, baseline=baseline, n_steps=200, seed=3)
    # seed=3: image i's baseline comes from its own generator, seeded position_seed(3, i)
    base = make_baseline(images, baseline, generator=image_generators(per_image_seeds(3, len(images))))
    with torch.no_grad():
        gap = (model(images) - model(base))[torch.arange(4), targets]
    total = attr.sum(dim=(1, 2, 3))
    assert (gap.abs() > 1e-3).all()
    rel = ((total - gap).abs() / gap.abs()).max().item()
    assert rel < 0.01, rel
    torch.testing.assert_close(delta, total - gap, atol=1e-4, rtol=1e-3)


def test_integrated_gradients_closed_form_on_linear_model():
    """For f(x) = w.x + b, IG = (x - x') * w exactly, and averaging n baselines uses their mean."""
    model = Linear((3, 8, 8))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 2])
    attr = explain(model, x, t, "integrated_gradients_uniform", n_steps=5, n_baselines=3, seed=7)
    g = image_generators(per_image_seeds(7, 2))  # per image; 3 successive draws each
    mean_base = torch.stack([make_baseline(x, "uniform", generator=g) for _ in range(3)]).mean(0)
    torch.testing.assert_close(attr, (x - mean_base) * model.w[t].detach(), rtol=1e-4, atol=1e-5)


def test_gaussian_baseline_is_image_plus_unit_noise_unclipped():
    x = torch.full((2, 3, 64, 64), 0.5)
    b = make_baseline(x, "gaussian", generator=torch.Generator().manual_seed(0))
    noise = b - x
    assert abs(noise.std().item() - 1.0) < 0.02 and abs(noise.mean().item()) < 0.02
    assert b.min() < -1 and b.max() > 2  # not clipped to [0, 1], as the paper
    u = make_baseline(x, "uniform", generator=torch.Generator().manual_seed(0))
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01


def test_random_methods_are_seeded_and_leave_global_rng_alone(small_cnn, images):
    t = torch.tensor([0, 1, 2, 0])
    for method in ("integrated_gradients_uniform", "integrated_gradients_gaussian", "smoothgrad"):
        opts = FAST[method]
        a = explain(small_cnn, images, t, method, seed=5, **opts)
        state = torch.get_rng_state()
        b = explain(small_cnn, images, t, method, seed=5, **opts)
        assert torch.equal(torch.get_rng_state(), state)
        c = explain(small_cnn, images, t, method, seed=6, **opts)
        assert torch.equal(a, b), method
        assert not torch.allclose(a, c), method


def test_smoothgrad_on_linear_model_is_exact():
    """The gradient of a linear model does not depend on the noise: SG = w, SG^2 = w^2."""
    model = Linear((3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    t = torch.tensor([0, 2, 1])
    w = model.w[t].detach()
    torch.testing.assert_close(explain(model, x, t, "smoothgrad", n_samples=7, inner_batch=4), w)
    torch.testing.assert_close(explain(model, x, t, "smoothgrad_sq", n_samples=7), w * w)


def test_smoothgrad_noise_level_matters(small_cnn, images):
    t = torch.tensor([0, 1, 2, 0])
    grad = explain(small_cnn, images, t, "gradient")
    sg0 = explain(small_cnn, images, t, "smoothgrad", n_samples=3, noise=0.0)
    torch.testing.assert_close(sg0, grad)
    sg = explain(small_cnn, images, t, "smoothgrad", n_samples=3, noise=0.3)
    assert not torch.allclose(sg, grad)


def test_occlusion_geometry_follows_the_paper():
    assert scaled_occlusion_geometry(224) == (50, 25)
    assert scaled_occlusion_geometry(112) == (25, 12) or scaled_occlusion_geometry(112) == (25, 13)
    assert scaled_occlusion_geometry(32) == (7, 4)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_occlusion_attributes_to_the_region_the_model_looks_at(output):
    r, size = 8, 32  # the model reads only the top-left 8x8 patch
    model = RegionModel(r)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    attr = explain(model, x, torch.zeros(2, dtype=torch.long), "occlusion", output=output)
    torch.testing.assert_close(attr[:, 0], attr[:, 2])  # a window spans all channels
    assert METHODS["occlusion"].channel_shared
    sal = reduce_channels(attr, channel_shared=True)  # (2, 32, 32): the averaged drop itself
    window, _ = scaled_occlusion_geometry(size)
    reach = r + window - 1  # windows overlapping the patch cover at most this far
    assert np.all(sal[:, reach:, :] == 0) and np.all(sal[:, :, reach:] == 0)
    assert np.all(sal[:, :r, :r] > 0)  # every pixel of the patch matters
    assert sal[:, :r, :r].mean() > 3 * sal[:, :reach, :reach][:, r:, r:].mean()


def test_occlusion_averages_overlapping_windows():
    """Against a brute-force reference: each pixel gets the mean drop over the windows
    that cover it (Appendix B.3), windows at multiples of the stride (the last may be cut)."""
    size, window, stride = 12, 4, 3
    model = Linear((3, size, size))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1])
    attr = explain(model, x, t, "occlusion", window=window, stride=stride, output="logit")
    f0 = model(x)[0, 1].item()
    total = torch.zeros(size, size, dtype=torch.float64)
    count = torch.zeros(size, size, dtype=torch.float64)
    n_pos = -(-(size - window) // stride) + 1
    for i in range(n_pos):
        for j in range(n_pos):
            occ = x.clone()
            occ[..., i * stride : i * stride + window, j * stride : j * stride + window] = 0
            drop = f0 - model(occ)[0, 1].item()
            total[i * stride : i * stride + window, j * stride : j * stride + window] += drop
            count[i * stride : i * stride + window, j * stride : j * stride + window] += 1
    expected = (total / count).float()
    for c in range(3):
        torch.testing.assert_close(attr[0, c], expected, rtol=1e-4, atol=1e-4)


def test_gradcam_matches_pytorch_grad_cam(resnet32):
    """Captum LayerGradCam + ReLU + bilinear upsampling == pytorch_grad_cam.GradCAM (min-max)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from robsal.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", ["a", "b", "c"], image_size=96).eval()  # layer4: 3x3
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1, 1)
    t = torch.tensor([0, 0, 1, 1, 2, 2])  # every class for both images
    ours = reduce_channels(explain(model, x, t, "gradcam"), channel_shared=True)  # (6, 96, 96)
    with GradCAM(model=model, target_layers=[model.net.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in t])  # (6, 96, 96), min-max
    assert hook_count(model) == 0
    compared = 0
    for i in range(len(t)):
        o = ours[i]
        if o.max() == o.min():  # all-negative CAM: ReLU gives zeros, nothing to correlate
            assert ref[i].max() == ref[i].min()
            continue
        o = (o - o.min()) / (o.max() - o.min())
        r = np.corrcoef(o.ravel(), ref[i].ravel())[0, 1]
        assert r > 0.999, (i, r)
        np.testing.assert_allclose(o, ref[i], atol=2e-3)
        compared += 1
    assert compared >= 3


def test_gradcam_repeats_one_map_over_channels(small_cnn, images):
    a = explain(small_cnn, images, None, "gradcam")
    assert a.shape == images.shape and (a >= 0).all()
    torch.testing.assert_close(a[:, 0], a[:, 2])
    red = reduce_channels(a, channel_shared=True)
    np.testing.assert_allclose(red, a[:, 0].numpy())  # the CAM itself, not 3x
    # layer given by dotted path = the default (last conv of a non-ResNet)
    torch.testing.assert_close(explain(small_cnn, images, None, "gradcam", layer="features.2"), a)
    with pytest.raises(ConfigError, match="layer9"):
        explain(small_cnn, images, None, "gradcam", layer="layer9")


@pytest.mark.parametrize("method", list(METHODS))
def test_no_hooks_left_mode_and_requires_grad_restored_no_param_grads(resnet32, method):
    # (seed 11: a uniform IG baseline drawn with the default seed 0 would equal an
    # image drawn with seed 0, and IG would be exactly zero)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    resnet32.train()
    before = hook_count(resnet32)
    frozen = resnet32.net.fc.weight
    frozen.requires_grad_(False)  # a parameter the caller froze stays frozen
    flags = [p.requires_grad for p in resnet32.parameters()]
    try:
        a = explain(resnet32, x, torch.tensor([0, 2]), method, **FAST.get(method, {}))
        assert [p.requires_grad for p in resnet32.parameters()] == flags  # restored, one by one
    finally:
        frozen.requires_grad_(True)
    assert flags.count(False) == 1
    assert hook_count(resnet32) == before == 0
    assert resnet32.training  # restored
    assert all(p.grad is None for p in resnet32.parameters())
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.abs().sum() > 0
    resnet32.eval()


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "occlusion", "gradcam"])
def test_batching_does_not_change_deterministic_methods(small_cnn, images, method):
    t = torch.tensor([0, 1, 2, 0])
    whole = explain(small_cnn, images, t, method)
    parts = explain(small_cnn, images, t, method, batch_size=3)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-6)


def test_guided_backprop_keeps_only_positive_paths():
    """On a one-ReLU model f = relu(w.x) with w.x > 0, guided backprop = relu(grad) * ... = w masked >= 0."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 1, bias=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin, torch.nn.ReLU(), torch.nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[3].weight.fill_(-1.0)  # negative gradient flows back into the ReLU
    x = torch.rand(1, 3, 2, 2)
    with torch.no_grad():
        lin.weight.abs_()  # w.x > 0: the ReLU is active
    grad = explain(model, x, torch.tensor([0]), "gradient")
    gbp = explain(model, x, torch.tensor([0]), "guided_backprop")
    assert (grad < 0).all()  # plain gradient: -w
    assert torch.equal(gbp, torch.zeros_like(gbp))  # guided: negative signal blocked at the ReLU
