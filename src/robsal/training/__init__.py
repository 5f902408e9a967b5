"""Standard and PGD adversarial training, CV tuning and robust evaluation (paper Section 2, Appendix A).

Public: :func:`train_models`, :func:`tune`, :func:`evaluate_model`, :func:`robust_accuracy`, :func:`fit`.
Data-parallel training under ``torchrun``: :mod:`robsal.training.distributed` (:func:`shard_bounds`).
"""

from robsal.training.cv import tune
from robsal.training.distributed import shard_bounds
from robsal.training.evaluate import accuracy, classification_metrics, evaluate_model, robust_accuracy
from robsal.training.loop import Adversary, train_epoch
from robsal.training.train import fit, train_models

__all__ = [
    "Adversary",
    "accuracy",
    "classification_metrics",
    "evaluate_model",
    "fit",
    "robust_accuracy",
    "shard_bounds",
    "train_epoch",
    "train_models",
    "tune",
]
