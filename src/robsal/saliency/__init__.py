"""Saliency maps (paper Appendix B): one interface over Captum, visualisation, figures.

Public: :func:`explain` (stable), :data:`METHODS`, :func:`explain_run`,
:func:`integrated_gradients_with_delta`, :func:`reduce_channels`, :func:`normalize_map`,
:func:`image_seed` (the per-image seed of the random methods).
"""

from robsal.saliency.methods import (
    METHODS,
    explain,
    get_method,
    integrated_gradients_with_delta,
    make_baseline,
    scaled_occlusion_geometry,
)
from robsal.saliency.run import explain_run, select_images
from robsal.saliency.seeds import image_seed
from robsal.saliency.visualize import normalize_map, reduce_channels, to_display

__all__ = [
    "METHODS",
    "explain",
    "explain_run",
    "get_method",
    "image_seed",
    "integrated_gradients_with_delta",
    "make_baseline",
    "normalize_map",
    "reduce_channels",
    "scaled_occlusion_geometry",
    "select_images",
    "to_display",
]
