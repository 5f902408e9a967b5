"""Models: torchvision classifiers that take [0, 1] images and normalise inside.

Public: :func:`load` (stable), :func:`build_model`, :func:`save`, :data:`GROUPS`.
"""

from robsal.models.build import (
    Normalize,
    RobsalClassifier,
    build_model,
    group_parameters,
    groups_of,
    load,
    load_pretrained,
    save,
)

__all__ = [
    "Normalize",
    "RobsalClassifier",
    "build_model",
    "group_parameters",
    "groups_of",
    "load",
    "load_pretrained",
    "save",
]
