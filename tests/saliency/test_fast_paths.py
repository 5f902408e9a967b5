"""Fast paths of robsal.saliency.explain give the plain results.

* ``explain(fast=True)`` (input-gradient view, frozen parameters) against
  ``explain(fast=False)`` (Captum on the model as given): within 1e-5 of each map's
  maximum (the stand-ins of the view one by one: tests/models/test_input_gradient.py);
* batched IG and SmoothGrad against Captum / autograd called one image at a time on
  the same baselines and noise;
* the caller's model comes back as it was (mode, every parameter's requires_grad,
  submodules), also when the method fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from robsal.errors import ConfigError
from robsal.saliency import METHODS, explain, integrated_gradients_with_delta, make_baseline, registry
from robsal.saliency.registry import CPU_PASS_PIXELS, pass_size
from robsal.saliency.seeds import image_generators, per_image_seeds

from .conftest import Linear, hook_count

INPUT_GRADIENT_METHODS = [name for name, m in METHODS.items() if m.input_gradients]
OPTIONS = {
    "integrated_gradients": {"n_steps": 6, "baseline": "gaussian"},
    "integrated_gradients_uniform": {"n_steps": 6},
    "integrated_gradients_gaussian": {"n_steps": 6},
    "smoothgrad": {"n_samples": 4, "inner_batch": 6},
    "smoothgrad_sq": {"n_samples": 4},
}


def assert_maps_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """|a - b| <= rel x max|b| for every map (image) of (N, C, H, W)."""
    scale = b.abs().amax(dim=(1, 2, 3))
    assert (scale > 0).all()
    err = (a - b).abs().amax(dim=(1, 2, 3)) / scale
    assert err.max().item() <= rel, err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module (restored after): on the shared 2-core machine
    two spin-waiting threads made the single-image reference loops several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images32() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))


def test_registry_marks_the_input_gradient_methods():
    assert set(INPUT_GRADIENT_METHODS) == {
        "gradient",
        "input_x_gradient",
        "integrated_gradients",
        "integrated_gradients_uniform",
        "integrated_gradients_gaussian",
        "smoothgrad",
        "smoothgrad_sq",
    }


@pytest.mark.parametrize("method", INPUT_GRADIENT_METHODS)
def test_fast_equals_plain(resnet32, images32, method):
    t = torch.tensor([0, 1, 2])
    opts = dict(OPTIONS.get(method, {}), **({"seed": 3} if METHODS[method].random else {}))
    fast = explain(resnet32, images32, t, method, **opts)
    plain = explain(resnet32, images32, t, method, fast=False, **opts)
    assert fast.dtype == torch.float32 and fast.shape == images32.shape
    assert_maps_close(fast, plain)


def test_fast_equals_plain_for_a_channels_last_model(resnet32, images32):
    """A model and images already in channels-last layout: the max-pool and image-conv
    stand-ins step aside (they serve NCHW inputs), BatchNorm's works in any layout."""
    model = copy.deepcopy(resnet32).to(memory_format=torch.channels_last)
    x = images32.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([2, 0, 1])
    for method in ("gradient", "integrated_gradients_uniform"):
        fast = explain(model, x, t, method, **OPTIONS.get(method, {}))
        plain = explain(model, x, t, method, fast=False, **OPTIONS.get(method, {}))
        assert_maps_close(fast, plain)


def test_ig_delta_fast_equals_plain(smooth_cnn, images):
    t = torch.tensor([0, 1, 2, 0])
    a_fast, d_fast = integrated_gradients_with_delta(smooth_cnn, images, t, n_steps=8, seed=4)
    a_plain, d_plain = integrated_gradients_with_delta(smooth_cnn, images, t, n_steps=8, seed=4, fast=False)
    assert_maps_close(a_fast, a_plain)
    torch.testing.assert_close(d_fast, d_plain, rtol=1e-5, atol=1e-6)


def test_batched_ig_equals_captum_per_image(resnet32, images32):
    """explain (all images and steps batched, fast view) == Captum's IntegratedGradients
    called once per image on the plain model with the same baselines."""
    t = torch.tensor([1, 2, 0])
    ours = explain(resnet32, images32, t, "integrated_gradients_uniform", n_steps=8, seed=5, inner_batch=5)
    base = make_baseline(images32, "uniform", generator=image_generators(per_image_seeds(5, 3)))
    ref = torch.cat(
        [
            IntegratedGradients(resnet32).attribute(
                images32[i : i + 1].clone().requires_grad_(True),
                baselines=base[i : i + 1],
                target=int(t[i]),
                n_steps=8,
                method="gausslegendre",
            )
            for i in range(3)
        ]
    ).detach()
    assert_maps_close(ours, ref)


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad_sq"])
def test_batched_smoothgrad_equals_per_image_gradients(resnet32, images32, method):
    """SmoothGrad of 3 images x 5 samples, 6 noisy copies per pass (passes straddle
    images) == the mean of plain per-image autograd gradients at the same noisy points:
    image i's sample s is x_i + sigma x the s-th (C, H, W) normal draw of image i's
    generator (seeded position_seed(seed, i))."""
    n, k, per_pass, sigma, seed = 3, 5, 2, 0.2, 8
    t = torch.tensor([0, 2, 1])
    ours = explain(resnet32, images32, t, method, n_samples=k, noise=sigma, seed=seed, inner_batch=n * per_pass)
    gens = image_generators(per_image_seeds(seed, n))
    rows = [
        torch.stack([images32[i] + sigma * torch.randn(images32.shape[1:], generator=gens[i]) for _ in range(k)])
        for i in range(n)
    ]
    noisy = torch.stack(rows)  # (N, S, C, H, W)
    grads = torch.zeros_like(noisy)
    for i in range(n):
        for s in range(k):
            xi = noisy[i, s : s + 1].clone().requires_grad_(True)
            (grads[i, s],) = torch.autograd.grad(resnet32(xi)[0, t[i]], xi)
    ref = grads.mean(1) if method == "smoothgrad" else (grads**2).mean(1)
    assert_maps_close(ours, ref)


class _Recorder(nn.Module):
    """A small CNN that records, at every forward, whether any parameter requires grad
    and whether it is in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((any(p.requires_grad for p in self.parameters()), self.training))
        return self.fc(self.body(x).flatten(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_requires_grad_and_mode_restored(method, images):
    torch.manual_seed(0)
    model = _Recorder().train()
    model.fc.bias.requires_grad_(False)  # a caller's frozen parameter stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    modules = dict(model.named_modules())
    opts = {"n_steps": 3} if method.startswith("integrated") else {"n_samples": 2} if method.startswith("smooth") else {}
    explain(model, images, torch.tensor([0, 1, 2, 0]), method, **opts)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and hook_count(model) == 0
    assert dict(model.named_modules()) == modules  # the same module objects
    assert all(p.grad is None for p in model.parameters())
    # during the call: eval mode and (fast path) no parameter requiring grad
    assert model.seen and model.seen == [(False, False)] * len(model.seen)
    model.seen.clear()
    explain(model, images, torch.tensor([0, 1, 2, 0]), method, fast=False, **opts)
    assert any(rg for rg, _ in model.seen)  # the plain path leaves the parameters alone
    assert [p.requires_grad for p in model.parameters()] == flags


def test_state_restored_when_the_method_fails(images):
    torch.manual_seed(0)
    model = _Recorder().train()
    with pytest.raises(ConfigError, match="n_steps"):
        explain(model, images, torch.tensor([0, 1, 2, 0]), "integrated_gradients", n_steps=0)
    assert model.training and all(p.requires_grad for p in model.parameters())


class _Counting(nn.Module):
    """Records the batch size of every forward pass of ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.inner(x)


def test_passes_follow_the_cpu_pixel_budget():
    assert CPU_PASS_PIXELS == 8 * 224 * 224
    assert pass_size(64, torch.zeros(1, 3, 224, 224)) == 8
    assert pass_size(64, torch.zeros(1, 3, 128, 128)) == 24
    assert pass_size(64, torch.zeros(1, 3, 64, 64)) == 64  # inner_batch binds first
    assert pass_size(3, torch.zeros(1, 3, 64, 64)) == 3
    assert pass_size(64, torch.zeros(1, 3, 1024, 1024)) == 1


@pytest.mark.parametrize("method", ["integrated_gradients_uniform", "occlusion", "smoothgrad"])
def test_pixel_budget_splits_passes_not_results(monkeypatch, small_cnn, images, method):
    """With a budget of 2 images per pass, no pass is larger, and every method gives the
    unsplit maps (IG's baselines and SmoothGrad's noise are drawn per image)."""
    t = torch.tensor([0, 1, 2, 0])
    opts = {"n_steps": 5} if method.startswith("integrated") else {"n_samples": 3} if method == "smoothgrad" else {}
    counting = _Counting(small_cnn).eval()
    whole = explain(counting, images, t, method, inner_batch=64, **opts)
    assert max(counting.sizes) > 2
    counting.sizes.clear()
    monkeypatch.setattr(registry, "CPU_PASS_PIXELS", 2 * 16 * 16)
    split = explain(counting, images, t, method, inner_batch=64, **opts)
    assert counting.sizes and max(counting.sizes) <= 2
    # SmoothGrad's noise is drawn per image and sample, so the split changes nothing either
    assert_maps_close(split, whole)


def test_smoothgrad_split_over_passes_is_exact_on_a_linear_model(monkeypatch):
    monkeypatch.setattr(registry, "CPU_PASS_PIXELS", 2 * 8 * 8)
    model = Linear((3, 8, 8))
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(explain(model, x, t, "smoothgrad", n_samples=3), model.w[t].detach())
