"""Stop policies for :func:`robsal.training.train.fit`: early stopping on the validation loss.

``fit(model, data, plan, stop=policy)`` measures the mean cross-entropy on the plan's
validation rows after every epoch and hands it to the policy, which answers with an event
(written to the epoch's history record); ``"stop"`` ends training. A policy sees the
model and the optimiser, so it may keep the best weights or lower the learning rate; fit
calls :meth:`StopPolicy.start` before the first epoch and :meth:`StopPolicy.finish` after
the last.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import nn


class StopPolicy(Protocol):
    def start(self, model: nn.Module) -> None: ...

    def after_epoch(self, epoch: int, val_loss: float, model: nn.Module, optimizer: torch.optim.Optimizer) -> str: ...

    def finish(self, model: nn.Module) -> None: ...


class Plateau:
    """Early stopping and lr decay on a validation loss (Appendix A, fine-tuning).

    :meth:`step` returns ``improved`` (strictly below the best so far), ``reduce_lr``
    (every ``lr_patience``-th epoch in a row without improvement: the learning rate is
    multiplied by ``lr_factor``), ``stop`` (the ``patience``-th) or ``wait``. With patience
    10 and lr_patience 5: lr x0.1 after 5 epochs without improvement, stop after 10. A NaN
    loss never improves. With ``keep_best`` the model ends with the weights of its best
    epoch (those it started with when no epoch improved).
    """

    def __init__(
        self, patience: int = 10, lr_patience: int = 5, lr_factor: float = 0.1, keep_best: bool = True
    ) -> None:
        self.patience, self.lr_patience, self.lr_factor, self.keep_best = patience, lr_patience, lr_factor, keep_best
        self.best = float("inf")
        self.bad = 0
        self.best_epoch = 0
        self.stopped = "max_epochs"  # or "early"
        self._best_state: dict[str, Any] | None = None

    def step(self, loss: float) -> str:
        if loss < self.best:
            self.best, self.bad = float(loss), 0
            return "improved"
        self.bad += 1
        if self.bad >= self.patience:
            return "stop"
        if self.bad % self.lr_patience == 0:
            return "reduce_lr"
        return "wait"

    def start(self, model: nn.Module) -> None:
        if self.keep_best:
            self._best_state = copy.deepcopy(model.state_dict())

    def after_epoch(self, epoch: int, val_loss: float, model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
        event = self.step(val_loss)
        if event == "improved":
            self.best_epoch = epoch
            if self.keep_best:
                self._best_state = copy.deepcopy(model.state_dict())
        elif event == "reduce_lr":
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        elif event == "stop":
            self.stopped = "early"
        return event

    def finish(self, model: nn.Module) -> None:
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
            self._best_state = None
