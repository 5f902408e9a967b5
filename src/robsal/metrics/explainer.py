"""The one place where the metrics stage recomputes saliency maps.

Faithfulness needs the model only; sanity, seed stability and max-sensitivity need
fresh maps (of a randomised model, of a perturbed input). They all go through an
``ExplainFn``: ``fn(model, images, targets, method) -> attributions (N, C, H, W)``,
which by default is :func:`robsal.saliency.explain` with the run's saliency options.
Tests pass a stub (e.g. a plain autograd input gradient) instead.

Random methods (IG baselines, SmoothGrad noise) are seeded per image. An ``ExplainFn``
may take a keyword ``image_ids`` (the ids of ``images``, in order); the default one
does, and then seeds image i from (run seed, ``image_ids[i]``) exactly as the saliency
stage did, so a recomputed map of the unchanged model equals the stored one. Without
ids (``image_ids=None``, or an ``ExplainFn`` that takes no ``image_ids``) it seeds
from (run seed, position of the image in the call): still deterministic, and the same
images at the same positions get the same draws on every recomputation (the original
and randomised models of the sanity cascade, clean and perturbed inputs of
max-sensitivity), so the comparisons stay valid; only their draws differ from the
stored maps'.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

ExplainFn = Callable[..., torch.Tensor]
"""``fn(model, images (N, C, H, W), targets (N,), method[, image_ids=...]) -> (N, C, H, W)``."""


def reduce_channels(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): sum over channels of |a|, the map every stage stores."""
    if attributions.ndim == 3:
        return attributions.abs()
    return attributions.abs().sum(dim=1)


def takes_image_ids(explain_fn: ExplainFn) -> bool:
    """Whether ``explain_fn`` accepts the keyword ``image_ids`` (or any keyword)."""
    try:
        params = inspect.signature(explain_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "image_ids" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def compute_maps(
    explain_fn: ExplainFn,
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    batch_size: int = 16,
    image_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Channel-reduced maps (N, H, W) float64 of ``method``, computed in batches.

    ``image_ids`` (N,): handed on, batch by batch, to an ``explain_fn`` that takes them
    (module docstring); ignored by one that does not.
    """
    if image_ids is not None and len(image_ids) != images.shape[0]:
        raise ValueError(f"{len(image_ids)} image ids for {images.shape[0]} images")
    pass_ids = image_ids is not None and takes_image_ids(explain_fn)
    out = []
    for i in range(0, images.shape[0], batch_size):
        kw = {"image_ids": [str(k) for k in image_ids[i : i + batch_size]]} if pass_ids else {}
        a = explain_fn(model, images[i : i + batch_size], targets[i : i + batch_size], method, **kw)
        out.append(reduce_channels(a.detach()).double().cpu().numpy())
    return np.concatenate(out, axis=0)


def default_explain_fn(cfg=None) -> ExplainFn:  # noqa: ANN001
    """:func:`robsal.saliency.explain` with the options the saliency stage used for each method.

    With a config, the options come from ``robsal.saliency.run.method_options(cfg, method,
    image_ids)`` (IG steps and baselines, SmoothGrad samples, seeds, ...). The returned
    ``fn(model, images, targets, method, image_ids=None)`` seeds the random methods per
    image: from (run seed, image id) when given the ids, so recomputed maps match the
    stored ones; from (run seed, position in the call) otherwise (module docstring).
    Without a config the run seed is 0 and the methods' defaults apply.
    """
    # imported here, when maps are recomputed, not with robsal.metrics: robsal.saliency loads
    # Captum and its figure module, which sets matplotlib's backend at import
    from robsal.saliency import explain, get_method
    from robsal.saliency.run import method_options
    from robsal.saliency.seeds import image_seeds

    def fn(model, images, targets, method, image_ids=None):  # noqa: ANN001, ANN202
        options: dict = {}
        if cfg is not None:
            options = dict(method_options(cfg, method, image_ids))
        elif image_ids is not None and get_method(method).random:
            options = {"seed": image_seeds(0, [str(i) for i in image_ids])}
        return explain(model, images, targets, method, **options)

    return fn
