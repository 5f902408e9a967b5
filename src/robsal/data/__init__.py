"""Data layer: datasets on disk -> balanced, lesion-grouped splits -> cached uint8 tensors.

Public: :class:`PreparedData`, :func:`prepare`, :func:`load_run_data`, :class:`Augmenter`.
"""

from robsal.data.prepared import ARTIFACT_NAMES, SPLITS_COLUMNS, PreparedData

__all__ = ["ARTIFACT_NAMES", "SPLITS_COLUMNS", "PreparedData"]

try:  # the loaders land stage by stage
    from robsal.data.pipeline import load_run_data, prepare  # noqa: F401

    __all__ += ["load_run_data", "prepare"]
except ModuleNotFoundError as exc:  # pragma: no cover
    if exc.name != "robsal.data.pipeline":
        raise
try:
    from robsal.data.augment import Augmenter  # noqa: F401

    __all__ += ["Augmenter"]
except ModuleNotFoundError as exc:  # pragma: no cover
    if exc.name != "robsal.data.augment":
        raise
