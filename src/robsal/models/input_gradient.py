"""Input gradients of a model, cheaper on CPU: the *input-gradient view* and its mode.

Attacks (:func:`robsal.attacks.pgd`) and the gradient-based saliency methods
(:func:`robsal.saliency.explain`) both need d output / d pixels of an eval-mode model and
nothing else. :func:`input_gradient_mode` gives them that: the model in eval mode (every
submodule's mode restored afterwards), its parameters' ``requires_grad`` switched off
(restored one by one; no weight-gradient bookkeeping in the autograd graph: no measurable
time on CPU, where ``torch.autograd.grad`` already skips weight gradients; it matters for
compiled graphs and memory) and, unless ``view=False``, the model's
:func:`input_gradient_view`: the same modules and parameters with

* eval-mode BatchNorm layers whose backward is one multiply by ``weight / sqrt(var +
  eps)`` (PyTorch's CPU kernel for the eval-mode BatchNorm backward took 4-6x the
  time of its forward);
* on CPU, max pooling computed on a channels-last copy (the NCHW CPU kernel that
  keeps indices for the backward took ~8 % of a ResNet-18 step, the channels-last one
  plus the copy a fifth of that), output and indices copied back to NCHW;
* on CPU, the input gradient of an image-facing convolution (<= 4 input channels, the
  ResNet stem) computed by PyTorch's im2col kernel (``aten::_slow_conv2d_backward``, a
  private op), ~2x faster than oneDNN's for 3 output channels.

Every forward value is bitwise the one of the plain model (same kernels, same layouts),
so ReLU and max-pool decisions cannot flip; only the backward's float rounding changes
(agreement with the plain path within 1e-5 of a saliency map's maximum; tested in
``tests/models/test_input_gradient.py``). What it buys is measured in ``bench/README.md``.

This module sits in ``models/``, below both ``attacks/`` and ``saliency/``, because it is
about the layers robsal's models are built of; it imports nothing of robsal but
``robsal.utils``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robsal.utils import module_mode

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
    gradient only (module docstring). Build it with ``model`` already in eval
    mode and parameters not requiring gradients (:func:`input_gradient_mode`); it gives
    no parameter gradients. TorchScript and compiled modules are returned unchanged.
    """
    if isinstance(model, torch.jit.ScriptModule) or hasattr(model, "_orig_mod"):
        return model
    return _view_tree(model)




@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Every parameter's ``requires_grad`` off for the block, each flag restored after
    (also on error). Yields ``model``."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)


@contextlib.contextmanager
def input_gradient_mode(model: nn.Module, *, view: bool = True) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block, both restored after (every
    submodule's mode, every parameter's flag). Yields the module to differentiate: the
    model's :func:`input_gradient_view`, or the model itself with ``view=False``."""
    with module_mode(model, training=False), frozen_parameters(model):
        yield input_gradient_view(model) if view else model
