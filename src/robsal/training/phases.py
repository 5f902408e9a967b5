"""Training phases of Appendix A: which parameters train, optimiser and learning-rate schedule.

Phase 1 trains only the new classification layer ("to avoid large gradient
updates that would collapse the pre-trained weights"), phase 2 fine-tunes the
whole network. Both use Adam (betas 0.9, 0.999) with weight decay 5e-4 and a
step decay of the learning rate (x0.1 after 15 of the 25 phase-2 epochs). All
values come from :class:`robsal.config.TrainConfig`; the ``paper`` preset holds
the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robsal.config import PhaseConfig
from robsal.errors import ConfigError
from robsal.models.build import RobsalClassifier, group_parameters


def head_of(model: nn.Module) -> nn.Module:
    """The classification layer of ``model`` (a RobsalClassifier, a torchvision net, or a wrapper).

    Looks for ``model.head()`` (RobsalClassifier), then an attribute ``fc``,
    ``classifier``, ``head`` or ``heads`` on the model or on ``model.net``.
    """
    if isinstance(model, RobsalClassifier):
        return model.head()
    for owner in (model, getattr(model, "net", None)):
        if owner is None:
            continue
        for attr in ("fc", "classifier", "head", "heads"):
            mod = getattr(owner, attr, None)
            if isinstance(mod, nn.Module):
                return mod
    raise ConfigError(
        f"cannot find the classification layer of {type(model).__name__} for a 'head' phase; "
        "name it fc/classifier/head or set train.phase1.trainable=all"
    )


def set_trainable(model: nn.Module, which: str | Sequence[int]) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a phase; returns the trainable parameters.

    ``which``: ``head``, ``all``, or layer groups (e.g. ``(4, 5)``: fine-tuning, Appendix D;
    :data:`robsal.models.build.RESNET_GROUPS`), whose parameters are returned in the model's order.
    """
    if not isinstance(which, str):
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for _, p in group_parameters(model, list(which))]
        for p in params:
            p.requires_grad_(True)
        return params
    if which not in ("head", "all"):
        raise ConfigError(f"trainable must be 'head' or 'all', got {which!r}")
    if which == "all":
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    head = {id(p) for p in head_of(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    return [p for p in model.parameters() if id(p) in head]


def make_optimizer(
    params: Sequence[nn.Parameter], phase: PhaseConfig, betas: Sequence[float], weight_decay: float
) -> torch.optim.Adam:
    """Adam with the paper's coupled (L2) weight decay: ``torch.optim.Adam(weight_decay=...)``."""
    return torch.optim.Adam(params, lr=phase.lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, phase: PhaseConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """lr *= ``lr_decay`` after each epoch listed in ``lr_decay_epochs`` (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(phase.lr_decay_epochs), gamma=phase.lr_decay)
