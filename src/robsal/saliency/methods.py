"""Saliency methods of the paper (Appendix B) behind one interface, backed by Captum.

``explain(model, images, targets, method, **options) -> attributions``

* ``model``: any ``nn.Module`` classifier taking images (N, C, H, W) in [0, 1] pixel
  space and returning logits (N, K). robsal models normalise inside, so every
  attribution here is with respect to *pixels*, not normalised values.
* ``images``: float (N, C, H, W) in [0, 1] on the model's device.
* ``targets``: int64 (N,) class indices (the true label by default in
  :func:`robsal.saliency.explain_run`, as the original code), or ``None`` for the
  predicted class.
* returns float32 (N, C, H, W), the input's shape, on the input's device.

Methods (registry keys; also the names of the saved ``.npz`` files)

=================================  ============================================  ==========
name                               Captum class / paper section                  options
=================================  ============================================  ==========
``gradient``                       Saliency (signed gradient), B.1               --
``input_x_gradient``               InputXGradient                                --
``guided_backprop``                GuidedBackprop                                --
``integrated_gradients``           IntegratedGradients, B.2                      baseline, n_steps,
                                                                                 n_baselines, seed
``integrated_gradients_uniform``   IG with a U[0, 1] baseline (Fig. 1, 6)        as above
``integrated_gradients_gaussian``  IG with an image + N(0, 1) baseline (Fig. 6)  as above
``smoothgrad`` / ``smoothgrad_sq`` NoiseTunnel(Saliency)'s formula (Smilkov)     n_samples, noise, seed
``occlusion``                      Occlusion, B.3                                window, stride
``gradcam``                        LayerGradCam on ``net.layer4``, B.4           layer
=================================  ============================================  ==========

Random draws per image. IG's random baselines and SmoothGrad's noise of image i come
from a CPU generator seeded with image i's own seed (``seed``: N per-image seeds, e.g.
:func:`robsal.saliency.seeds.image_seed` of (run seed, image id) as ``explain_run``
passes, or an int from which the seed of position i is derived), so a map never depends
on the batch it was computed in. ``n_baselines`` (config ``saliency.ig_baselines``)
averages IG over that many baselines, image i's successive draws.

Every method batches its inner work (IG interpolation steps via Captum's
``internal_batch_size``, SmoothGrad samples (noisy copies) in passes,
occlusion windows via ``perturbations_per_eval``), so memory stays bounded by
``inner_batch`` forward passes of the model at once; on CPU also by
:data:`CPU_PASS_PIXELS` pixels per pass (8 images at 224 px), where larger passes
were measured slower per image. The images themselves are split when they alone
exceed that budget.

The model is put in eval mode for the call (its previous mode is restored) and no
hook stays registered afterwards (Captum removes its own; tests check it).

Fast input gradients (``explain(..., fast=True)``, the default). The methods that only
need d output / d pixels (gradient, input x gradient, IG, SmoothGrad; flag
``input_gradients`` in the registry) run Captum on an *input-gradient view* of the
model (:func:`input_gradient_view`): the same modules and parameters, with

* the parameters' ``requires_grad`` switched off for the call (restored afterwards,
  one by one): no weight-gradient bookkeeping in the autograd graph (no measurable
  time on CPU, where ``torch.autograd.grad`` already skips weight gradients; it
  matters for compiled graphs and memory);
* eval-mode BatchNorm layers whose backward is one multiply by ``weight / sqrt(var +
  eps)`` (PyTorch's CPU kernel for the eval-mode BatchNorm backward took 4-6x the
  time of its forward);
* on CPU, max pooling computed on a channels-last copy (the NCHW CPU kernel that
  keeps indices for the backward took ~8 % of a ResNet-18 step, the channels-last one
  plus the copy a fifth of that), output and indices copied back to NCHW;
* on CPU, the input gradient of an image-facing convolution (<= 4 input channels, the
  ResNet stem) computed by PyTorch's im2col kernel, ~2x faster than oneDNN's for 3
  output channels.

Every forward value is bitwise the one of the plain model (same kernels, same layouts),
so ReLU and max-pool decisions cannot flip; only the backward's float rounding changes
(agreement with the plain path within 1e-5 of the map's maximum; tested). Measured
on a 2-core CPU at 64 px: 1.14-1.33x less CPU time per ResNet-18 forward + input
gradient, IG and SmoothGrad 1.2-1.6x faster than Captum called per image
(bench/README.md). ``fast=False`` runs Captum on the model as given.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from torch import nn

from robsal.errors import ConfigError
from robsal.saliency.seeds import image_generators, per_image_seeds

# Occlusion geometry of Appendix B.3: 50x50 px patches, stride 25 px, at 224 px input.
OCCLUSION_WINDOW_224 = 50
OCCLUSION_STRIDE_224 = 25
REFERENCE_SIZE = 224

# Forward passes the inner loops of a method may batch together (IG steps x images,
# SmoothGrad samples x images, occlusion windows x images).
DEFAULT_INNER_BATCH = 64

# On CPU, at most this many pixels (images x H x W) per pass. Measured with ResNet-18
# on one thread of the 2-core development CPU: the time per image of a forward +
# input-gradient pass was flat up to about 4e5 pixels per pass (64 images of 64 px,
# 16-32 of 128 px, 8 of 224 px) and 20-40 % higher at 64 images of 224 px (1e6-3e6
# pixels); forward-only passes likewise (42 vs 59 ms per 224 px image at 8 vs 64).
CPU_PASS_PIXELS = 8 * 224 * 224

IG_BASELINES = ("uniform", "gaussian", "black", "blur")


@dataclass(frozen=True)
class Method:
    """A registry entry.

    ``channel_shared``: the method yields one value per pixel, repeated over the C
    channels to keep the input's shape (Grad-CAM; occlusion, whose windows span all
    channels). Channel reductions must then take
    one channel instead of summing C equal copies (see ``visualize.reduce_channels``).
    ``random``: the method draws random numbers (baselines, noise) and takes ``seed``.
    ``input_gradients``: the method needs only gradients of the model's output with
    respect to its input and puts no hooks on the model's modules, so ``explain`` may
    hand it the :func:`input_gradient_view` of the model (``fast=True``).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    channel_shared: bool = False
    random: bool = False
    input_gradients: bool = False


METHODS: dict[str, Method] = {}


def register(
    name: str,
    description: str,
    *,
    channel_shared: bool = False,
    random: bool = False,
    input_gradients: bool = False,
):
    """Decorator adding a method ``fn(model, images, targets, **options)`` to :data:`METHODS`."""

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METHODS[name] = Method(name, fn, description, channel_shared, random, input_gradients)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The registry entry of ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown saliency method {name!r}; known methods: {', '.join(METHODS)}"
        ) from None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _passes(inner_batch: int, images: torch.Tensor) -> int:
    """Images per forward pass: ``inner_batch``, on CPU at most ``CPU_PASS_PIXELS / (H*W)``;
    at least 1."""
    n = max(1, int(inner_batch))
    if images.device.type == "cpu":
        n = min(n, max(1, CPU_PASS_PIXELS // (images.shape[-2] * images.shape[-1])))
    return n


def _chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]


Seed = int | Sequence[int] | torch.Tensor | None
"""The ``seed`` option of the random methods: an int, N per-image integer seeds, or None
(:func:`robsal.saliency.seeds.per_image_seeds`)."""


def _generators(
    seed: Seed, generator: torch.Generator | None, n: int
) -> torch.Generator | list[torch.Generator]:
    """Where the random draws of ``n`` images come from: the caller's ``generator``
    (draws for the whole batch at once, so they depend on the batch), else one fresh CPU
    generator per image, seeded with its per-image seed (``seed``: see
    :func:`robsal.saliency.seeds.per_image_seeds`)."""
    if generator is not None:
        return generator
    return image_generators(per_image_seeds(seed, n))


# --------------------------------------------------------------------------- fast input gradients


class _EvalBatchNormFn(torch.autograd.Function):
    """Eval-mode batch norm: forward = ``F.batch_norm`` with the running statistics (the
    kernel ``nn.BatchNorm*d.eval()`` calls, so bitwise the same output); backward with
    respect to the input only: ``grad * weight / sqrt(running_var + eps)``, one
    broadcast multiply instead of ``native_batch_norm_backward``."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):  # noqa: ANN001, ANN205
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        ctx.save_for_backward(scale)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (scale,) = ctx.saved_tensors
        # (C,) -> (1, C, 1, ..., 1) against grad (N, C, *spatial)
        return grad * scale.view((1, -1) + (1,) * (grad.ndim - 2)), None, None, None, None, None


class _StandIn(nn.Module):
    """Base of the modules :func:`input_gradient_view` puts in place of a layer; the
    layer itself stays a submodule (parameters, buffers and ``state_dict`` of the view
    are the model's)."""


class _EvalBatchNorm(_StandIn):
    """Input-gradient stand-in for an eval-mode ``nn.BatchNorm{1,2,3}d``."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        return _EvalBatchNormFn.apply(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(u) for u in v]


class _MaxPoolFn(torch.autograd.Function):
    """Max pooling of an NCHW tensor computed in channels-last layout.

    Forward: ``max_pool2d_with_indices`` on a channels-last copy (on CPU ~10x faster
    than the NCHW kernel that keeps indices), then output and indices copied back to
    NCHW. The values are the same (a maximum is exact) and so are the indices (both
    kernels keep the first maximum of a window in row-major order, NaN included;
    tested). Backward: PyTorch's NCHW ``max_pool2d_with_indices_backward`` with those
    indices, exactly the plain backward."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):  # noqa: ANN001, ANN205
        out, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation, ceil_mode
        )
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.geometry = (kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, idx = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.geometry, idx)
        return grad_x, None, None, None, None, None


def _cpu_nchw_with_grad(x: torch.Tensor) -> bool:
    """Whether a CPU stand-in's custom kernel applies: a contiguous NCHW CPU input needing a gradient."""
    return x.device.type == "cpu" and x.ndim == 4 and x.requires_grad and x.is_contiguous()


class _ChannelsLastMaxPool(_StandIn):
    """Input-gradient stand-in for ``nn.MaxPool2d``: :class:`_MaxPoolFn` for an NCHW
    input on CPU that needs a gradient; the pool itself otherwise."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _cpu_nchw_with_grad(x):
            return self.pool(x)
        p = self.pool
        kernel = _pair(p.kernel_size)
        stride = _pair(p.stride) if p.stride else kernel
        return _MaxPoolFn.apply(x, kernel, stride, _pair(p.padding), _pair(p.dilation), bool(p.ceil_mode))


class _ImageConvFn(torch.autograd.Function):
    """Forward: the convolution's own ``_conv_forward`` (bitwise the same output).
    Backward: the input gradient only, from PyTorch's im2col kernel
    (``aten::_slow_conv2d_backward``)."""

    @staticmethod
    def forward(ctx, x, conv):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        ctx.conv = conv
        return conv._conv_forward(x, conv.weight, conv.bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        conv = ctx.conv
        grad_x = torch.ops.aten._slow_conv2d_backward.output_mask(
            grad.contiguous(), x, conv.weight, conv.kernel_size, conv.stride, conv.padding, [True, False, False]
        )[0]
        return grad_x, None


class _ImageConv(_StandIn):
    """Input-gradient stand-in for an image-facing ``nn.Conv2d`` (<= 4 input channels):
    on CPU, oneDNN's input gradient for so few channels took twice the time of the
    im2col kernel (ResNet-18 stem, 7x7 stride 2, at 64 and 224 px)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _cpu_nchw_with_grad(x):
            return self.conv(x)
        return _ImageConvFn.apply(x, self.conv)


def _stand_in(module: nn.Module) -> nn.Module | None:
    """The input-gradient stand-in of one module, or None to keep (and walk) it.

    Exact classes only: a subclass may change ``forward``. Modules with hooks keep
    their own forward (a stand-in would bypass the hooks)."""
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        return None
    if getattr(module, "_backward_pre_hooks", None):
        return None
    kind = type(module)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if not module.training and module.running_mean is not None and module.running_var is not None:
            return _EvalBatchNorm(module)
    elif kind is nn.MaxPool2d:
        if not module.return_indices:
            return _ChannelsLastMaxPool(module)
    elif kind is nn.Conv2d:
        if (
            module.in_channels <= 4
            and module.groups == 1
            and tuple(module.dilation) == (1, 1)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            return _ImageConv(module)
    return None


def _view_tree(module: nn.Module) -> nn.Module:
    if isinstance(module, _StandIn):
        return module  # already a view
    stand_in = _stand_in(module)
    if stand_in is not None:
        return stand_in
    if not module._modules:
        return module  # a leaf we keep: the very same object
    # A shallow copy: the same parameters, buffers, hooks and attributes; only the
    # submodule table is new, so the original model is left as it was.
    view = copy.copy(module)
    view._modules = {name: (None if child is None else _view_tree(child)) for name, child in module._modules.items()}
    return view


def input_gradient_view(model: nn.Module) -> nn.Module:
    """A module computing ``model``'s forward bitwise, with a faster input gradient.

    Shares every parameter and buffer with ``model`` (nothing is copied); eval-mode
    BatchNorm, ``nn.MaxPool2d`` and image-facing ``nn.Conv2d`` layers are replaced by
    stand-ins whose forward calls the same kernel and whose backward computes the input
    gradient only (see the module docstring). Build it with ``model`` already in eval
    mode and parameters not requiring gradients (:func:`_attribution_mode`); it gives
    no parameter gradients. TorchScript and compiled modules are returned unchanged.
    """
    if isinstance(model, torch.jit.ScriptModule) or hasattr(model, "_orig_mod"):
        return model
    return _view_tree(model)


@contextlib.contextmanager
def _attribution_mode(model: nn.Module, fast: bool) -> Iterator[nn.Module]:
    """Eval mode; with ``fast``, also parameters frozen (input gradients only). Yields
    the module to attribute through (the model itself, or its
    :func:`input_gradient_view` for the methods that take it); restores the mode and
    every parameter's ``requires_grad`` afterwards."""
    with _eval_mode(model):
        if not fast:
            yield model
            return
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield input_gradient_view(model)
        finally:
            for p in frozen:
                p.requires_grad_(True)


def scaled_occlusion_geometry(image_size: int) -> tuple[int, int]:
    """(window, stride) in px at ``image_size``: Appendix B.3's 50/25 px at 224, scaled.

    At 224 px this is exactly (50, 25); at 64 px (14, 7); at 32 px (7, 4). Both are at
    least 1 px.
    """
    window = max(1, round(OCCLUSION_WINDOW_224 * image_size / REFERENCE_SIZE))
    stride = max(1, round(OCCLUSION_STRIDE_224 * image_size / REFERENCE_SIZE))
    return window, stride


def _blur(images: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W); default sigma = H / 16 px (14 px at 224), after
    Sturmfels et al. 2020 (the paper's ref. [18])."""
    from torchvision.transforms.functional import gaussian_blur

    h = images.shape[-1]
    sigma = float(sigma) if sigma is not None else max(1.0, h / 16)
    k = int(2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * (min(images.shape[-2:]) // 2) - 1)  # reflect padding needs k/2 < size
    return gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])


def make_baseline(
    images: torch.Tensor,
    baseline: str | torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """An IG baseline for ``images`` (N, C, H, W) in [0, 1] (paper Appendix B.2).

    * ``uniform``: every value ~ U[0, 1], a noise image;
    * ``gaussian``: ``image + N(0, 1)`` as the paper (sigma = 1 in [0, 1] pixel units).
      Not clipped to [0, 1], as the paper; most of the baseline then lies outside the
      image range, which is what "sigma = 1" means in pixel space;
    * ``black``: zeros (the paper argues against it for dermoscopy: lesions are dark);
    * ``blur``: a Gaussian blur of the image (:func:`_blur`);
    * a tensor broadcastable to the images.

    Random draws come from ``generator``, CPU generators, so CPU and GPU runs draw the
    same numbers, then moved to the images' device: one generator draws the (N, C, H, W)
    batch at once; a sequence of N generators (what :func:`explain` uses) draws image
    i's (C, H, W) from ``generator[i]``, so an image's baseline does not depend on the
    other images. Called again with the same generators, it draws the next baselines.
    """
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images.device, images.dtype).expand_as(images)
    if baseline in ("uniform", "gaussian"):
        draw = torch.rand if baseline == "uniform" else torch.randn
        if isinstance(generator, torch.Generator):
            values = draw(images.shape, generator=generator)
        else:
            if len(generator) != images.shape[0]:
                raise ValueError(f"{len(generator)} generators for {images.shape[0]} images")
            # (C, H, W) per image -> (N, C, H, W)
            values = torch.stack([draw(images.shape[1:], generator=g) for g in generator])
        values = values.to(images.device, images.dtype)
        return values if baseline == "uniform" else images + values
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "blur":
        return _blur(images, blur_sigma)
    raise ConfigError(
        f"unknown integrated-gradients baseline {baseline!r}; use one of {', '.join(IG_BASELINES)} or a tensor"
    )


# --------------------------------------------------------------------------- methods


@register(
    "gradient", "d logit_target / d pixel (Saliency, Simonyan et al.; Appendix B.1), signed", input_gradients=True
)
def _gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # abs=False: the raw gradient; the visualisation takes |.| (Appendix B).
    return Saliency(model).attribute(images, target=targets, abs=False)


@register("input_x_gradient", "pixel value x gradient", input_gradients=True)
def _input_x_gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return InputXGradient(model).attribute(images, target=targets)


@register("guided_backprop", "guided backpropagation (ReLU gradients clamped at 0)")
def _guided_backprop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # Captum announces its (removed afterwards) ReLU hooks
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return GuidedBackprop(model).attribute(images, target=targets)


def integrated_gradients_with_delta(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    baseline: str | torch.Tensor = "uniform",
    n_steps: int = 50,
    n_baselines: int = 1,
    seed: Seed = 0,
    generator: torch.Generator | None = None,
    blur_sigma: float | None = None,
    inner_batch: int = DEFAULT_INNER_BATCH,
    fast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Appendix B.2, eq. 2) and Captum's convergence delta.

    Returns (attributions (N, C, H, W), delta (N,)) where
    ``delta = sum(attributions) - (f(x) - f(baseline))`` per image (completeness
    axiom; for ``n_baselines > 1`` both are averaged over the baselines, which keeps
    the identity with f(baseline) averaged too). Gauss-Legendre quadrature with
    ``n_steps`` points; the N x n_baselines x n_steps interpolated images are run
    ``inner_batch`` at a time. The model runs in eval mode; ``fast``: through its
    :func:`input_gradient_view` (module docstring). Random baselines are drawn per image
    as in :func:`explain` (``seed``: an int or N per-image seeds; ``generator``: one
    generator for the whole batch instead).
    """
    images = images.detach().float().requires_grad_(True)
    with _attribution_mode(model, fast) as forward:
        attr, delta = _integrated_gradients(
            forward,
            images,
            targets,
            baseline=baseline,
            n_steps=n_steps,
            n_baselines=n_baselines,
            gen=_generators(seed, generator, images.shape[0]),
            blur_sigma=blur_sigma,
            inner_batch=inner_batch,
            with_delta=True,
        )
    return attr.detach(), delta.detach()


def _integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    baseline: str | torch.Tensor,
    n_steps: int,
    n_baselines: int,
    gen: torch.Generator | list[torch.Generator],
    blur_sigma: float | None,
    inner_batch: int,
    with_delta: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IG through Captum; ``with_delta=False`` skips the convergence delta (two extra
    forward passes over the images and the baselines, ~3 % of the time at 32 steps)."""
    if n_steps < 1 or n_baselines < 1:
        raise ConfigError(f"integrated gradients needs n_steps >= 1 and n_baselines >= 1, got {n_steps}, {n_baselines}")
    n = images.shape[0]
    # Several random baselines are evaluated in one batched call: the images are
    # repeated n_baselines times, (N, C, H, W) -> (B*N, C, H, W), row b*N + i.
    x = images.repeat(n_baselines, 1, 1, 1) if n_baselines > 1 else images
    t = targets.repeat(n_baselines)
    # All baselines are drawn first, so how the rows are split below changes nothing;
    # with per-image generators, image i's baselines b = 0, 1, ... are the successive
    # draws of its own generator (the first is the n_baselines = 1 baseline).
    base = torch.cat([make_baseline(images, baseline, generator=gen, blur_sigma=blur_sigma) for _ in range(n_baselines)])
    passes = _passes(inner_batch, images)
    ig = IntegratedGradients(model)
    attrs, deltas = [], []
    # Captum batches the steps of the rows it is given (``passes`` // rows steps per
    # pass); rows beyond one pass are split here, since Captum would not.
    for sl in _chunks(x.shape[0], passes):
        out = ig.attribute(
            x[sl],
            baselines=base[sl],
            target=t[sl],
            n_steps=n_steps,
            method="gausslegendre",
            internal_batch_size=passes,
            return_convergence_delta=with_delta,
        )
        a, d = out if with_delta else (out, None)
        attrs.append(a)
        deltas.append(d)
    # (B*N, C, H, W) -> (B, N, C, H, W) -> mean over baselines
    attr = torch.cat(attrs).view(n_baselines, n, *images.shape[1:]).mean(0)
    delta = torch.cat(deltas).view(n_baselines, n).mean(0) if with_delta else None
    return attr, delta


def _ig(default_baseline: str | None) -> Callable[..., torch.Tensor]:
    def fn(
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        baseline: str | torch.Tensor | None = None,
        n_steps: int = 50,
        n_baselines: int = 1,
        seed: Seed = 0,
        generator: torch.Generator | None = None,
        blur_sigma: float | None = None,
        inner_batch: int = DEFAULT_INNER_BATCH,
    ) -> torch.Tensor:
        if default_baseline is not None and baseline is not None and not (
            isinstance(baseline, str) and baseline == default_baseline
        ):
            raise ConfigError(
                f"integrated_gradients_{default_baseline} fixes the baseline; use method "
                f"'integrated_gradients' with baseline={baseline!r}"
            )
        attr, _ = _integrated_gradients(
            model,
            images,
            targets,
            baseline=baseline if baseline is not None else (default_baseline or "uniform"),
            n_steps=n_steps,
            n_baselines=n_baselines,
            gen=_generators(seed, generator, images.shape[0]),
            blur_sigma=blur_sigma,
            inner_batch=inner_batch,
            with_delta=False,
        )
        return attr

    return fn


register(
    "integrated_gradients",
    "Integrated Gradients, baseline uniform|gaussian|black|blur|tensor (B.2)",
    random=True,
    input_gradients=True,
)(
    _ig(None)
)
register(
    "integrated_gradients_uniform", "Integrated Gradients, U[0,1] baseline (Fig. 1, 6)", random=True, input_gradients=True
)(
    _ig("uniform")
)
register(
    "integrated_gradients_gaussian",
    "Integrated Gradients, image + N(0,1) baseline (Fig. 6)",
    random=True,
    input_gradients=True,
)(
    _ig("gaussian")
)


def _smoothgrad(nt_type: str) -> Callable[..., torch.Tensor]:
    squared = nt_type == "smoothgrad_sq"

    def fn(
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        n_samples: int = 25,
        noise: float = 0.15,
        seed: Seed = 0,
        inner_batch: int = DEFAULT_INNER_BATCH,
    ) -> torch.Tensor:
        """SmoothGrad (Smilkov et al. 2017): mean gradient (``smoothgrad_sq``: mean squared
        gradient) over ``n_samples`` copies x + N(0, sigma^2) of the image, sigma = ``noise``
        x the input range (1 in [0, 1] pixel space; Smilkov et al. suggest 0.1-0.2).

        The formula of Captum's ``NoiseTunnel(Saliency)`` (tested against it with the same
        noise), but the noise of image i comes from its own CPU generator (seeded with
        its per-image seed; sample s = the s-th (C, H, W) normal draw), not from torch's
        global RNG, so a map does not depend on the other images of the call nor on how
        the N x n_samples noisy copies are split into passes of ``inner_batch``.
        """
        if n_samples < 1 or noise < 0:
            raise ConfigError(f"smoothgrad needs n_samples >= 1 and noise >= 0, got {n_samples}, {noise}")
        n = images.shape[0]
        gens = image_generators(per_image_seeds(seed, n))
        sigma = float(noise) * 1.0  # input range of [0, 1] pixel space
        x0 = images.detach()
        sal = Saliency(model)
        acc = torch.zeros_like(x0)  # (N, C, H, W): sum over samples
        # Row r of the N x S noisy copies is image r // S, sample r % S (image major);
        # ``_passes`` rows at a time.
        for sl in _chunks(n * n_samples, _passes(inner_batch, images)):
            owner = [r // n_samples for r in range(sl.start, sl.stop)]
            # (P, C, H, W) noise, drawn sample by sample from each row's image generator
            eps = torch.stack([torch.randn(x0.shape[1:], generator=gens[i]) for i in owner])
            idx = torch.tensor(owner, device=x0.device)
            noisy = (x0[idx] + (eps * sigma).to(x0.device, x0.dtype)).requires_grad_(True)
            g = sal.attribute(noisy, target=targets[idx], abs=False).detach()
            if squared:
                g = g * g
            for j, i in enumerate(owner):  # samples added in order: the same sum for every split
                acc[i] += g[j]
        return acc / n_samples

    return fn


register(
    "smoothgrad", "SmoothGrad: gradient averaged over noisy copies (Smilkov et al.)", random=True, input_gradients=True
)(
    _smoothgrad("smoothgrad")
)
register(
    "smoothgrad_sq",
    "SmoothGrad-Squared: squared gradient averaged over noisy copies",
    random=True,
    input_gradients=True,
)(
    _smoothgrad("smoothgrad_sq")
)


@register(
    "occlusion", "drop of the target output when a window is set to 0, overlaps averaged (B.3)", channel_shared=True
)
def _occlusion(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    occlusion_value: float = 0.0,
    output: str = "probability",
    inner_batch: int = DEFAULT_INNER_BATCH,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus; Appendix B.3).

    Square windows of ``window`` px moved by ``stride`` px (default: the paper's 50/25 px
    at 224, scaled to the image size by :func:`scaled_occlusion_geometry`) are replaced
    by ``occlusion_value`` (0 = black, Captum's default); a pixel's attribution is the
    drop of the target output averaged over every window covering it, as the paper.
    ``output='probability'`` (the paper's text: "decrease of the predicted
    probability") scores the softmax probability; ``'logit'`` scores the logit
    (Captum's default when given the model itself). A window spans all C channels, so
    the C channels of a pixel hold the same value (``channel_shared``): the saved map is
    the averaged drop itself, not C times it.
    """
    if output not in ("probability", "logit"):
        raise ConfigError(f"occlusion output must be 'probability' or 'logit', got {output!r}")
    c, h, w = images.shape[1:]
    dw, ds = scaled_occlusion_geometry(min(h, w))
    window = int(window or dw)
    stride = int(stride or ds)
    forward = model if output == "logit" else (lambda x: torch.softmax(model(x), dim=1))
    passes = _passes(inner_batch, images)
    occ = Occlusion(forward)
    return torch.cat(
        [
            occ.attribute(
                images[sl],
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=float(occlusion_value),
                target=targets[sl],
                perturbations_per_eval=max(1, passes // (sl.stop - sl.start)),
            )
            for sl in _chunks(images.shape[0], passes)
        ]
    )


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """ResNet ``layer4`` (7x7 at 224 px, Appendix B.4) of a robsal model or a bare
    torchvision ResNet; otherwise the last ``nn.Conv2d`` of the model."""
    for path in ("net.layer4", "layer4"):
        with contextlib.suppress(AttributeError):
            return model.get_submodule(path)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; pass layer=")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    if layer is None:
        return default_gradcam_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ConfigError(
            f"Grad-CAM layer {layer!r} is not a submodule of {type(model).__name__}; "
            "give a dotted path such as 'net.layer4'"
        ) from None


@register("gradcam", "Grad-CAM on the last conv block, ReLU, bilinear upsampling (B.4)", channel_shared=True)
def _gradcam(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.; Appendix B.4, eqs. 3-4).

    (N, C, H, W) -> layer map (N, 1, h, w) (ReLU applied) -> bilinear upsampling to
    (N, 1, H, W) -> repeated over the C channels to (N, C, H, W) so that every method
    returns the input's shape. Reductions take one channel (``channel_shared``), so
    the saved map is the upsampled CAM itself, not C times it.
    """
    mod = resolve_layer(model, layer)
    cam = LayerGradCam(model, mod).attribute(images, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return cam.expand(-1, images.shape[1], -1, -1).contiguous()


# --------------------------------------------------------------------------- interface


def predicted(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes (N,) int64, in eval mode, without gradients."""
    with _eval_mode(model), torch.no_grad():
        return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    method: str,
    *,
    batch_size: int | None = None,
    fast: bool = True,
    **options: object,
) -> torch.Tensor:
    """Attributions of ``method`` for ``images`` (N, C, H, W) in [0, 1] -> float32 (N, C, H, W).

    ``targets``: (N,) int class indices, or None to explain the predicted class.
    ``batch_size``: images per call of the method (None = all at once); the method's
    own inner loops are batched too (``inner_batch`` forward passes at a time).
    ``fast``: parameters frozen for the call and, for the input-gradient methods, the
    :func:`input_gradient_view` of the model (module docstring); ``False`` runs Captum
    on the model as given (for debugging; the maps agree to float rounding).
    ``options`` go to the method (see the module docstring); an option the method does
    not take is a ConfigError naming it.

    Random methods (flag ``random``: IG's uniform/Gaussian baselines, SmoothGrad's
    noise) draw per image: image i's draws come from a CPU ``torch.Generator`` seeded
    with its own seed (then moved to the device, so CPU and GPU draw the same numbers),
    so its map does not depend on ``batch_size``, on the pass layout or on the other
    images. ``seed`` (default 0):

    * N per-image integer seeds (sequence, array or tensor, e.g.
      :func:`robsal.saliency.image_seed` of each image id, as ``explain_run`` does):
      the map of an image is then the same alone, in any batch, at any position;
    * an int: image i gets ``position_seed(seed, i)``, i its position in ``images``
      (reproducible for the same images in the same order);
    * None: per-image seeds drawn from torch's global RNG.

    IG's ``generator=`` (one generator for the whole call) is still accepted; its draws
    then depend on the batch.
    """
    entry = get_method(method)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    # A leaf that requires grad, detached from the caller's graph (Captum would
    # otherwise switch requires_grad on the caller's tensor and warn).
    images = images.detach().float().requires_grad_(True)
    if targets is None:
        targets = predicted(model, images)
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")

    accepted = set(inspect.signature(entry.fn).parameters) - {"model", "images", "targets"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"saliency method {method!r} takes no option {unknown[0]!r}; it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    step = batch_size or images.shape[0]
    seeds = None  # (N,) per-image seeds, sliced with the images below
    if entry.random and "seed" in accepted and options.get("generator") is None:
        seeds = per_image_seeds(options.get("seed", 0), images.shape[0])
    out = []
    with _attribution_mode(model, fast) as view:
        forward = view if entry.input_gradients else model
        for i in range(0, images.shape[0], step):
            opts = dict(options)
            if seeds is not None:
                opts["seed"] = seeds[i : i + step]
            a = entry.fn(forward, images[i : i + step], targets[i : i + step], **opts)
            out.append(a.detach().float())
    attr = torch.cat(out)
    assert attr.shape == images.shape, (method, attr.shape, images.shape)
    return attr
