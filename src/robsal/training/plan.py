"""What :func:`robsal.training.train.fit` trains: phases, data rows, adversary and outputs, as one record.

A :class:`TrainPlan` is built once (:meth:`TrainPlan.from_config` takes the optimiser,
precision and compile settings from the run's config) and read by every step of the
training loop, instead of some twenty keyword arguments handed from function to function.
:class:`Phase` is one training phase: a name, its :class:`~robsal.config.PhaseConfig`
(epochs, batch size, learning rate and its decay) and which parameters train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robsal.config import Config, PhaseConfig
from robsal.training import distributed

TRAIN_ACCURACY_IMAGES = 256  # clean train accuracy per epoch is measured on this many train images


@dataclass(frozen=True)
class Phase:
    """One training phase: ``config`` gives epochs, batch size and the lr schedule.

    ``trainable``: ``"head"``, ``"all"`` or a tuple of layer groups (fine-tuning,
    :data:`robsal.models.build.RESNET_GROUPS`); None takes ``config.trainable``.
    ``lr_key``: the setting an error about this phase's learning rate names
    (default ``train.<name>.lr``).
    """

    name: str
    config: PhaseConfig
    trainable: str | tuple[int, ...] | None = None
    lr_key: str | None = None

    @property
    def trains(self) -> str | tuple[int, ...]:
        return self.config.trainable if self.trainable is None else self.trainable

    @property
    def lr_setting(self) -> str:
        return self.lr_key or f"train.{self.name}.lr"

    @property
    def epochs(self) -> int:
        return int(self.config.epochs)

    @property
    def batch_size(self) -> int:
        return int(self.config.batch_size)


@dataclass(frozen=True)
class TrainPlan:
    """Everything :func:`~robsal.training.train.fit` needs besides the model and the data.

    Training: ``phases`` in order on the rows ``train_idx``, data order, augmentation and
    attack starts seeded by ``(seed, epoch)`` with global epochs counted from
    ``start_epoch`` (:mod:`robsal.training.loop`); ``adversary`` None = standard training;
    ``frozen_bn_eval`` keeps BatchNorm layers with frozen parameters in eval mode.
    Measured after every epoch: clean accuracy on ``train_eval_idx`` and ``val_idx``.
    Outputs: one record per epoch appended to ``history_path``, the training state
    checkpointed into ``checkpoint_dir`` (resumed when its ``fingerprint`` matches),
    TensorBoard scalars into ``tb_writer``, bars and one line per epoch when ``progress``.
    """

    phases: tuple[Phase, ...]
    train_idx: np.ndarray
    seed: int
    device: torch.device
    betas: tuple[float, float]
    weight_decay: float
    eval_batch_size: int = 128
    amp: bool = False
    compile: bool = False
    adversary: Any = None  # robsal.training.loop.Adversary | None
    augment: Callable[..., torch.Tensor] | None = None
    frozen_bn_eval: bool = False
    start_epoch: int = 0
    val_idx: np.ndarray | None = None
    train_eval_idx: np.ndarray | None = None
    name: str = ""
    progress: bool = True
    history_path: Path | None = None
    checkpoint_dir: Path | None = None
    fingerprint: str = ""
    tb_writer: Any = None

    @classmethod
    def from_config(
        cls, cfg: Config, phases: Sequence[Phase | tuple[str, PhaseConfig]], train_idx: np.ndarray, *,
        seed: int, device: torch.device, **options: Any,
    ) -> TrainPlan:
        """A plan with the optimiser (``train.betas``, ``train.weight_decay``), ``train.eval_batch_size``,
        ``train.amp`` and ``train.compile`` of ``cfg``; ``options`` sets any other field (or overrides those)."""
        fields = {
            "betas": (float(cfg.train.betas[0]), float(cfg.train.betas[1])),
            "weight_decay": float(cfg.train.weight_decay),
            "eval_batch_size": int(cfg.train.eval_batch_size),
            "amp": bool(cfg.train.amp),
            "compile": bool(cfg.train.compile),
        }
        fields.update(options)
        steps = tuple(p if isinstance(p, Phase) else Phase(p[0], p[1]) for p in phases)
        return cls(phases=steps, train_idx=np.asarray(train_idx), seed=int(seed), device=device, **fields)

    def replace(self, **changes: Any) -> TrainPlan:
        return dataclasses.replace(self, **changes)

    @property
    def shows_progress(self) -> bool:
        """Bars and epoch lines: when asked for, and in rank 0 only (data-parallel)."""
        return self.progress and distributed.is_main()

    @property
    def phase_plan(self) -> list[list[Any]]:
        """[[name, epochs], ...]: what a checkpoint must have been written for to be resumed."""
        return [[p.name, p.epochs] for p in self.phases]


def train_accuracy_subset(train_idx: np.ndarray, seed: int) -> np.ndarray:
    """The fixed train rows whose clean accuracy is measured after every epoch (seeded draw, sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_idx, size=min(TRAIN_ACCURACY_IMAGES, len(train_idx)), replace=False))
