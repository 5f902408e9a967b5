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
``input_gradients`` in the registry) run Captum on the model's *input-gradient view*
(:func:`robsal.models.input_gradient.input_gradient_view`: the same forward bit for bit,
parameters frozen for the call, a cheaper input-only backward of eval-mode BatchNorm, and
on CPU of max pooling and the stem convolution); the maps agree with the plain path within
1e-5 of the map's maximum (tested). ``fast=False`` runs Captum on the model as given.

Where the code is: this file holds :func:`explain` (the interface) and re-exports the
registry (``registry.py``) and the public helpers of the Captum adapters
(``captum_methods.py``); a new method goes into ``captum_methods.py`` (or a file of its
own imported here) with ``@register``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from robsal.errors import ConfigError
from robsal.models.input_gradient import input_gradient_mode, input_gradient_view
from robsal.saliency import captum_methods  # noqa: F401  (registers the methods)
from robsal.saliency.captum_methods import (
    IG_BASELINES,
    default_gradcam_layer,
    integrated_gradients_with_delta,
    make_baseline,
    resolve_layer,
    scaled_occlusion_geometry,
)
from robsal.saliency.registry import (
    CPU_PASS_PIXELS,
    DEFAULT_INNER_BATCH,
    METHODS,
    Method,
    Seed,
    get_method,
    register,
)
from robsal.saliency.seeds import per_image_seeds
from robsal.utils import module_mode

__all__ = [
    "CPU_PASS_PIXELS",
    "DEFAULT_INNER_BATCH",
    "IG_BASELINES",
    "METHODS",
    "Method",
    "Seed",
    "default_gradcam_layer",
    "explain",
    "get_method",
    "input_gradient_view",
    "integrated_gradients_with_delta",
    "make_baseline",
    "predicted",
    "register",
    "resolve_layer",
    "scaled_occlusion_geometry",
]


def predicted(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes (N,) int64, in eval mode, without gradients."""
    with module_mode(model, training=False), torch.no_grad():
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
    :func:`~robsal.models.input_gradient.input_gradient_view` of the model (module
    docstring); ``False`` runs Captum
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
    with (input_gradient_mode(model) if fast else module_mode(model, training=False)) as view:
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
