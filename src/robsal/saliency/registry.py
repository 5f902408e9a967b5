"""The saliency-method registry and what every method shares.

* :data:`METHODS`: name -> :class:`Method` (the function and its flags); methods add
  themselves with :func:`register` (``robsal/saliency/captum_methods.py``);
  :func:`get_method` looks one up;
* how a method batches its inner work: :func:`pass_size` images per forward pass (at
  most ``inner_batch``; on CPU also at most :data:`CPU_PASS_PIXELS` pixels), split with
  :func:`chunks`;
* where random draws come from: :func:`draw_generators` (one CPU generator per image,
  seeded with its per-image seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robsal.errors import ConfigError
from robsal.saliency.seeds import image_generators, per_image_seeds


# Forward passes the inner loops of a method may batch together (IG steps x images,
# SmoothGrad samples x images, occlusion windows x images).
DEFAULT_INNER_BATCH = 64

# On CPU, at most this many pixels (images x H x W) per pass. Measured with ResNet-18
# on one thread of the 2-core development CPU: the time per image of a forward +
# input-gradient pass was flat up to about 4e5 pixels per pass (64 images of 64 px,
# 16-32 of 128 px, 8 of 224 px) and 20-40 % higher at 64 images of 224 px (1e6-3e6
# pixels); forward-only passes likewise (42 vs 59 ms per 224 px image at 8 vs 64).
CPU_PASS_PIXELS = 8 * 224 * 224


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
    hand it the :func:`~robsal.models.input_gradient.input_gradient_view` of the model (``fast=True``).
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

def pass_size(inner_batch: int, images: torch.Tensor) -> int:
    """Images per forward pass: ``inner_batch``, on CPU at most ``CPU_PASS_PIXELS / (H*W)``;
    at least 1."""
    n = max(1, int(inner_batch))
    if images.device.type == "cpu":
        n = min(n, max(1, CPU_PASS_PIXELS // (images.shape[-2] * images.shape[-1])))
    return n


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]


Seed = int | Sequence[int] | torch.Tensor | None
"""The ``seed`` option of the random methods: an int, N per-image integer seeds, or None
(:func:`robsal.saliency.seeds.per_image_seeds`)."""


def draw_generators(
    seed: Seed, generator: torch.Generator | None, n: int
) -> torch.Generator | list[torch.Generator]:
    """Where the random draws of ``n`` images come from: the caller's ``generator``
    (draws for the whole batch at once, so they depend on the batch), else one fresh CPU
    generator per image, seeded with its per-image seed (``seed``: see
    :func:`robsal.saliency.seeds.per_image_seeds`)."""
    if generator is not None:
        return generator
    return image_generators(per_image_seeds(seed, n))
