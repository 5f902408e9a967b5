"""Projected gradient descent (PGD) in [0, 1] pixel space, L2 and Linf (paper Section 2, Appendix A).

The paper trains against "a PGD adversary in the l2 norm using seven steps, ...
step size of eps/5 and starting from a different random point. The adversarial
image is clipped in the allowed range [0, 1]" (Appendix A, following Madry et al.).
:func:`pgd` implements exactly that, for any ``nn.Module`` classifier that takes
images in [0, 1] and returns logits.

Units: ``eps`` and ``step_size`` are raw radii in [0, 1] pixel space for the
given input size. Paper-unit eps (L2 at 224 x 224 x 3) are converted by the
callers with :meth:`robsal.config.Config.eps_l2`: equal per-value RMS
perturbation means the L2 radius grows with the square root of the number of
input values, i.e. linearly with the image side (eps=4 at 224 px -> 1.14 at 64 px).

Guarantees (tested in ``tests/attacks``):

* ``||x_adv - x||_p <= eps`` (per sample) and ``x_adv`` in [0, 1];
* ``eps == 0`` returns the input unchanged;
* the model is put in eval mode during the attack (BatchNorm uses and keeps its
  running statistics) and every submodule's previous mode is restored afterwards (a
  BatchNorm layer kept in eval mode during fine-tuning stays in eval mode);
* only the input gradient is computed (``torch.autograd.grad``); the parameters'
  ``requires_grad`` flags are switched off during the attack and restored, so no
  parameter ``.grad`` is touched and the backward pass skips weight gradients;
* no host-device synchronisation inside the step loop (no ``.item()``, no
  data-dependent Python branches), so it runs asynchronously on a GPU.

The L2 step follows ``torchattacks.PGDL2`` (normalised gradient step, rescale
``delta`` onto the ball, clip to [0, 1]); with ``random_start=False`` the two
agree to float precision. The random start samples a Gaussian direction and a
radius uniform in [0, eps] (as torchattacks; Madry's ``robustness`` library starts
on the sphere instead; both are "a different random point" inside the ball).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from robsal.models.input_gradient import input_gradient_mode

_TINY = 1e-12  # guards the division by a zero gradient / zero perturbation norm


def attack_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack; both restored after
    (every submodule's mode, every parameter's ``requires_grad``)."""
    return input_gradient_mode(model, view=False)


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of every sample, shaped (N, 1, 1, ...) to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A random ``delta`` inside the eps-ball (same shape as ``x``)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return d / (_per_sample_l2(d) + _TINY) * r * eps


def random_start_delta(
    shape: tuple[int, ...], eps: float, norm: str, generator: torch.Generator | None, *,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The random start :func:`pgd` draws for images of ``shape`` (same generator calls, same values)."""
    return _random_start(torch.empty(shape, device=device, dtype=dtype), eps, norm, generator)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: Literal["l2", "linf"] = "l2",
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    fast: bool = True,
) -> torch.Tensor:
    """Untargeted PGD: adversarial images that increase the loss of ``labels``.

    Args:
        model: classifier taking images (N, C, H, W) in [0, 1], returning logits (N, K).
        images: (N, C, H, W) float in [0, 1]. Not modified.
        labels: (N,) int64 true classes.
        eps: radius of the perturbation ball in [0, 1] pixel space (raw units, >= 0).
        norm: ``"l2"`` (the paper's) or ``"linf"``.
        steps: number of gradient steps (paper: 7 for training).
        step_size: per-step length; default ``eps / 5`` (paper: eps/5).
        random_start: start from a random point in the ball (paper: yes).
        loss_fn: loss to ascend, ``loss_fn(logits, labels) -> scalar``; default summed
            cross-entropy (the step is normalised per sample, so sum or mean give the same step).
        generator: torch generator for the random start (on ``images.device``); None = global RNG.
        start: (N, C, H, W) random-start offset to use instead of drawing one (with
            ``random_start``; data-parallel training draws the starts of a whole global batch
            with :func:`random_start_delta` and gives each process its share).
        fast: attack through :func:`robsal.models.input_gradient.input_gradient_view` (the same
            forward, bit for bit; a cheaper input-only backward for eval-mode BatchNorm, max
            pooling and the stem convolution on CPU). ``False`` differentiates the model as is.

    Returns:
        (N, C, H, W) adversarial images, detached, same dtype/device as ``images``.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got eps={eps}, steps={steps}")
    x0 = images.detach()
    if eps == 0 or steps == 0 and not random_start:
        return x0.clone()
    alpha = float(eps) * 0.2 if step_size is None else float(step_size)
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    # Data-parallel wrappers are attacked as they are (no view).
    view = fast and not isinstance(model, DistributedDataParallel)
    with input_gradient_mode(model, view=view) as net, torch.enable_grad():
        if random_start:
            delta0 = _random_start(x0, eps, norm, generator) if start is None else start
            x = (x0 + delta0).clamp_(0.0, 1.0)
        else:
            x = x0.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            loss = loss_fn(net(x), labels)
            (grad,) = torch.autograd.grad(loss, x)  # (N, C, H, W); parameters are frozen
            x = x.detach()
            if norm == "l2":
                x = x + alpha * grad / (_per_sample_l2(grad) + _TINY)
                delta = x - x0
                # project onto the ball: scale by min(1, eps / ||delta||)
                delta = delta * torch.clamp(eps / (_per_sample_l2(delta) + _TINY), max=1.0)
            else:
                x = x + alpha * grad.sign()
                delta = (x - x0).clamp_(-eps, eps)
            # clipping to [0, 1] only shrinks |delta| per value, so the norm bound still holds
            x = (x0 + delta).clamp_(0.0, 1.0)
    return x.detach()
