"""The saliency methods of the paper (Appendix B) as Captum adapters, registered in
:data:`robsal.saliency.registry.METHODS` on import (the table is in
``robsal/saliency/methods.py``).

Each adapter is ``fn(model, images, targets, **options) -> (N, C, H, W)`` attributions;
:func:`robsal.saliency.explain` checks the options, puts the model in eval mode and
hands the input-gradient methods the model's input-gradient view.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence

import torch
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
from torchvision.transforms.functional import gaussian_blur

from robsal.errors import ConfigError
from robsal.models.input_gradient import input_gradient_mode
from robsal.saliency.registry import DEFAULT_INNER_BATCH, Seed, chunks, draw_generators, pass_size, register
from robsal.saliency.seeds import image_generators, per_image_seeds
from robsal.utils import module_mode

# Occlusion geometry of Appendix B.3: 50x50 px patches, stride 25 px, at 224 px input.
OCCLUSION_WINDOW_224 = 50
OCCLUSION_STRIDE_224 = 25
REFERENCE_SIZE = 224

IG_BASELINES = ("uniform", "gaussian", "black", "blur")


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
    :func:`~robsal.models.input_gradient.input_gradient_view`. Random baselines are drawn per image
    as in :func:`explain` (``seed``: an int or N per-image seeds; ``generator``: one
    generator for the whole batch instead).
    """
    images = images.detach().float().requires_grad_(True)
    with (input_gradient_mode(model) if fast else module_mode(model, training=False)) as forward:
        attr, delta = _integrated_gradients(
            forward,
            images,
            targets,
            baseline=baseline,
            n_steps=n_steps,
            n_baselines=n_baselines,
            gen=draw_generators(seed, generator, images.shape[0]),
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
    passes = pass_size(inner_batch, images)
    ig = IntegratedGradients(model)
    attrs, deltas = [], []
    # Captum batches the steps of the rows it is given (``passes`` // rows steps per
    # pass); rows beyond one pass are split here, since Captum would not.
    for sl in chunks(x.shape[0], passes):
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
            gen=draw_generators(seed, generator, images.shape[0]),
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
        # ``pass_size`` rows at a time.
        for sl in chunks(n * n_samples, pass_size(inner_batch, images)):
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
    passes = pass_size(inner_batch, images)
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
            for sl in chunks(images.shape[0], passes)
        ]
    )


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """The model's own ``gradcam_layer`` (``model.json`` of an imported model, see
    :mod:`robsal.models.imported`); else ResNet ``layer4`` (7x7 at 224 px, Appendix B.4) of a
    robsal model or a bare torchvision ResNet; otherwise the last ``nn.Conv2d`` of the model."""
    own = getattr(model, "meta", None)
    if isinstance(own, dict) and own.get("gradcam_layer"):
        return resolve_layer(model, str(own["gradcam_layer"]))
    if isinstance(own, dict) and own.get("imported") and own.get("gradcam_layer") is None:
        raise ConfigError(
            f"{own.get('arch')} has no convolutional feature map for Grad-CAM; import it with --gradcam-layer "
            "or set saliency.gradcam_layer, or leave gradcam out of the methods"
        )
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

