"""The one place where the metrics stage recomputes saliency maps.

Faithfulness needs the model only; sanity, seed stability and max-sensitivity need
fresh maps (of a randomised model, of a perturbed input). They all go through an
``ExplainFn``: ``fn(model, images, targets, method) -> attributions (N, C, H, W)``,
which by default is :func:`robsal.saliency.explain` with the run's saliency options.
Tests pass a stub (e.g. a plain autograd input gradient) instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

ExplainFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, str], torch.Tensor]


def reduce_channels(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): sum over channels of |a|, the map every stage stores."""
    if attributions.ndim == 3:
        return attributions.abs()
    return attributions.abs().sum(dim=1)


def compute_maps(
    explain_fn: ExplainFn,
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    batch_size: int = 16,
) -> np.ndarray:
    """Channel-reduced maps (N, H, W) float64 of ``method``, computed in batches."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        a = explain_fn(model, images[i : i + batch_size], targets[i : i + batch_size], method)
        out.append(reduce_channels(a.detach()).double().cpu().numpy())
    return np.concatenate(out, axis=0)


def default_explain_fn(cfg=None) -> ExplainFn:  # noqa: ANN001
    """:func:`robsal.saliency.explain` with the options the saliency stage used for each method.

    With a config, the options come from ``robsal.saliency.run.method_options(cfg, method)``
    (IG steps, SmoothGrad samples, seeds, ...), so recomputed maps match the stored ones.
    """
    from robsal.saliency import explain

    def fn(model, images, targets, method):  # noqa: ANN001, ANN202
        options: dict = {}
        if cfg is not None:
            from robsal.saliency.run import method_options

            options = dict(method_options(cfg, method))
        return explain(model, images, targets, method, **options)

    return fn
