"""Synchronised BatchNorm for data-parallel training (:mod:`robsal.training.distributed`).

Batch statistics over one process's share are not those of the global batch, so while a
model trains data-parallel its BatchNorm layers are converted (:func:`sync_batchnorm`): to
``torch.nn.SyncBatchNorm`` on CUDA and to :class:`CPUSyncBatchNorm` on the CPU (PyTorch's
SyncBatchNorm runs on GPUs only). :func:`revert_batchnorm` converts them back; parameters
and buffers are shared throughout, so the ``state_dict`` is the one that was built.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all processes, on the CPU (Gloo).

    ``torch.nn.SyncBatchNorm`` runs on GPUs only. In training mode (with a process group
    of more than one process) this layer gathers every process's count, mean and sum of
    squared deviations (one differentiable all-reduce of ``W x (2C + 1)`` numbers),
    combines them (Chan et al.'s parallel variance) into the mean and biased variance of
    the global batch, normalises with them, and updates the running statistics with the
    global mean and the unbiased global variance, as one process would. Shares may be
    empty. In eval mode, or without a process group, it is a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        n = x.numel() // c if c else 0
        if n:
            mean_r = x.mean(dims)  # (C,)
            m2_r = (x - mean_r.view(shape)).square().sum(dims)  # (C,) sum of squared deviations
        else:  # an empty share contributes nothing (count 0)
            mean_r = x.new_zeros(c) + x.sum() * 0  # keeps x in the graph
            m2_r = x.new_zeros(c)
        w, r = dist.get_world_size(), dist.get_rank()
        row = torch.cat([mean_r, m2_r, mean_r.new_tensor([float(n)])])  # (2C + 1,)
        rows = [row if i == r else torch.zeros_like(row) for i in range(w)]
        stats = _AllReduceSum.apply(torch.stack(rows))  # (W, 2C + 1): every process's row
        means, m2s, counts = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :]  # (W,C) (W,C) (W,1)
        total = counts.sum()
        mean = (counts * means).sum(0) / total  # (C,)
        m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)  # (C,)
        var = m2 / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = m2.detach() / (total.detach() - 1).clamp(min=1)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _sync_class(device: torch.device) -> type[_BatchNorm]:
    return nn.SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm


def _swap(bn: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """A ``cls`` layer that shares ``bn``'s parameters and buffers (same state_dict keys)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm layer of ``model`` by its synchronised version, in place; returns how many.

    Parameters and buffers are shared, not copied (an optimiser built before still
    trains them). :func:`revert_batchnorm` restores the original layer classes.
    """
    cls = _sync_class(device)
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
                new = _swap(child, cls)
                new._robsal_original = type(child)  # type: ignore[assignment]
                setattr(parent, name, new)
                n += 1
    return n


def revert_batchnorm(model: nn.Module) -> int:
    """Undo :func:`sync_batchnorm`: the original BatchNorm classes, same parameters and buffers."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            original = getattr(child, "_robsal_original", None)
            if isinstance(child, _BatchNorm) and original is not None:
                setattr(parent, name, _swap(child, original))
                n += 1
    return n
