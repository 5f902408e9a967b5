"""Models: torchvision classifiers that take [0, 1] images and normalise inside.

Public: :func:`load` (stable), :func:`build_model`, :func:`save`; the layer groups of
Appendix D: :data:`RESNET_GROUPS` (group number -> ResNet children), :func:`groups_of`,
:func:`group_parameters`.
"""

from robsal.models.build import (
    RESNET_GROUPS,
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
    "RESNET_GROUPS",
    "Normalize",
    "RobsalClassifier",
    "build_model",
    "group_parameters",
    "groups_of",
    "load",
    "load_pretrained",
    "save",
]
