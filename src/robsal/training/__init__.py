"""Standard and PGD adversarial training, CV tuning and robust evaluation (paper Section 2, Appendix A).

Public: :func:`train_models`, :func:`tune`, :func:`evaluate_model`, :func:`robust_accuracy`, :func:`fit`
(with a :class:`TrainPlan` of :class:`Phase` s and an optional stop policy such as :class:`Plateau`).
Data-parallel training under ``torchrun``: :mod:`robsal.training.distributed` (:func:`shard_bounds`).
"""

from robsal.training.cv import tune
from robsal.training.distributed import shard_bounds
from robsal.training.evaluate import accuracy, classification_metrics, evaluate_model, robust_accuracy
from robsal.training.loop import Adversary, train_epoch
from robsal.training.plan import Phase, TrainPlan
from robsal.training.stopping import Plateau
from robsal.training.train import fit, train_models

__all__ = [
    "Adversary",
    "Phase",
    "Plateau",
    "TrainPlan",
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
