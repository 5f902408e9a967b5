"""Data-parallel training over several processes (``torchrun``): environment, sharding, rank-0 writing.

``robsal train`` (and :func:`robsal.training.train_models`) detect a ``torchrun`` launch
from its environment variables (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``), start the
process group (NCCL on CUDA, Gloo on the CPU) and train one model with
``DistributedDataParallel``. The result equals one process with the same config up to
floating-point order:

* **Effective batch size.** ``train.phaseN.batch_size`` is the *global* batch. Every
  process computes the same permutation from ``(seed, epoch)``
  (:func:`robsal.training.loop.epoch_seed`), cuts it into the same global batches and
  keeps a contiguous share of each (:func:`shard_bounds`; shares differ by at most one
  image, the last partial batch included, and may be empty when a batch has fewer images
  than there are processes).
* **Gradient.** DDP averages the processes' gradients, i.e. divides their sum by the
  world size W. A process that holds ``n_r`` of a global batch of ``B`` images therefore
  minimises ``(W / B) * sum of its n_r cross-entropies`` (:func:`loss_scale`): the
  average over processes is ``(1 / W) * sum_r (W / B) * sum_{i in r} grad CE_i = (1 / B) *
  sum_i grad CE_i``, the gradient of one process's mean loss over the whole batch, for
  any split of ``B`` (uneven shares, an empty share, a last partial batch).
* **Randomness.** Augmentation parameters and PGD random starts are drawn for the whole
  global batch, on every process, with the same generators one process uses, and each
  process keeps its slice, so every image gets exactly the draw it gets in one process.
* **BatchNorm.** Batch statistics over a share are not those of the global batch, so the
  BatchNorm layers are converted for the duration of training: to
  ``torch.nn.SyncBatchNorm`` on CUDA, and to :class:`CPUSyncBatchNorm` on the CPU
  (PyTorch's SyncBatchNorm runs on GPUs only). Both normalise with the statistics of the
  global batch and update the running statistics with them, which therefore stay equal on
  every process. The PGD attack runs in eval mode (running statistics) on each process's
  own share, without communication. The layers are converted back when training ends, so
  the model (and its ``state_dict``) is the one that was built.
* **Files.** Only rank 0 writes (checkpoints, ``history.jsonl``, ``model.json``,
  ``model.safetensors``, TensorBoard logs, progress lines); the other processes wait for
  it (:func:`on_main`) and fail too when it fails. Resuming, rank 0 picks the checkpoint
  and every process loads that file. Evaluation after training runs on every process (same
  weights, same inputs, same results; no process waits for another) and rank 0 saves it.

Every process must see the same run directory and dataset (one node, or a filesystem
shared by the nodes). See ``docs/scaling.md`` for the commands.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from robsal.errors import ConfigError, UserError

T = TypeVar("T")
_DDP_ARGS = frozenset(inspect.signature(DistributedDataParallel.__init__).parameters)

# How long a process waits for the others in one collective (rank 0 preparing the data
# or saving a model). torchrun stops every process when one of them dies, so a long
# timeout never leaves a job hanging on a dead peer.
TIMEOUT = datetime.timedelta(hours=2)


class PeerFailed(UserError):
    """Rank 0 failed in a step the other processes waited for; its own message says why."""


@dataclass(frozen=True)
class TorchrunEnv:
    """The launcher's view of this process: ``world_size`` processes, global ``rank``, ``local_rank`` on its node."""

    world_size: int
    rank: int
    local_rank: int


def torchrun_env(environ: dict[str, str] | None = None) -> TorchrunEnv | None:
    """The torchrun environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``), or None for one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}: "
            "not integers; start distributed training with torchrun"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} / LOCAL_RANK={local} do not fit WORLD_SIZE={world}; start with torchrun")
    return TorchrunEnv(world, rank, local)


# --------------------------------------------------------------------------- process group


def active() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in rank 0 (and in a single process): the process that writes files."""
    return rank() == 0


def local_device(device: torch.device, env: TorchrunEnv) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA, the CPU for the CPU."""
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(
            f"device: distributed training runs on cuda or cpu, not {device.type}; set device=cuda or cpu"
        )
    n = torch.cuda.device_count()
    if env.local_rank >= n:
        raise ConfigError(
            f"LOCAL_RANK {env.local_rank} needs GPU {env.local_rank} but {n} are visible; "
            f"start at most {n} processes per node (torchrun --nproc_per_node {n})"
        )
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the torchrun process group for the duration of the block; yields this process's device.

    Without a torchrun environment (or with one process) it yields ``device`` and does
    nothing. A group that is already running (started by an enclosing ``session`` or by the
    caller) is used as it is and left running.
    """
    env = torchrun_env()
    if env is None:
        yield device
        return
    dev = local_device(device, env)
    if dist.is_initialized():
        yield dev
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def _flag_device() -> torch.device:
    """Where small control tensors live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every process."""
    if not active():
        return value
    t = torch.tensor([int(value)], dtype=torch.long, device=_flag_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes (a new tensor; ``t`` itself when there is one process)."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` in rank 0 only; every process waits for it (a barrier) and fails when it failed.

    Returns ``fn()`` in rank 0 and None elsewhere. In rank 0 the exception of ``fn`` is
    re-raised as it was; the other processes raise :class:`PeerFailed`.
    """
    if not active():
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised below, after telling the others)
            error = exc
    status = broadcast_int(0 if error is None else 1)
    if error is not None:
        raise error
    if status:
        raise PeerFailed(f"rank 0 failed (see its message); process {rank()} stops too")
    return result


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` in rank 0 first (it may write files), then in every other process (which only read)."""
    result = on_main(fn)
    if active() and not is_main():
        result = fn()
    return result  # type: ignore[return-value]


def main_lock(run_dir: str | Path) -> contextlib.AbstractContextManager:
    """The run lock (:class:`robsal.rundir.RunLock`, re-entrant) in rank 0; nothing in the other processes.

    Only rank 0 writes to the run directory, and the lock is per process: the other
    processes of the job read what rank 0 wrote after waiting for it.
    """
    from robsal.rundir import RunLock

    return RunLock(run_dir, reentrant=True) if is_main() else contextlib.nullcontext()


# --------------------------------------------------------------------------- sharding


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """This process's contiguous share ``[lo, hi)`` of a global batch of ``n`` images.

    The first ``n % world`` ranks get ``n // world + 1`` images, the others ``n // world``
    (zero when ``n < world``); the shares tile ``[0, n)`` in rank order.
    """
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def loss_scale(global_batch: int, world: int) -> float:
    """Factor on a share's *summed* loss so that DDP's gradient average is the global batch mean.

    DDP averages gradients over ``world`` processes; ``(world / B) * sum of the share's
    losses`` averaged over the processes is ``(1 / B) * sum over the whole batch`` for any
    split of the ``B`` images (see the module docstring).
    """
    return float(world) / float(max(global_batch, 1))


def unwrap(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def ddp_of(model: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel wrapper in ``model`` (possibly under torch.compile), or None."""
    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def world_and_rank(model: nn.Module) -> tuple[int, int]:
    """(world size, rank) of the DDP wrapper in ``model``; (1, 0) for a plain module."""
    ddp = ddp_of(model)
    if ddp is None:
        return 1, 0
    group = ddp.process_group
    return dist.get_world_size(group), dist.get_rank(group)


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``DistributedDataParallel`` around ``model`` (its BatchNorm layers synchronised first).

    Made once per training phase: DDP registers the parameters that require gradients
    when it is built, and phases differ in which do. Buffers are not re-broadcast before
    every forward pass (``broadcast_buffers=False``): the synchronised BatchNorm layers
    update their running statistics from the same global statistics on every process.
    """
    sync_batchnorm(model, device)
    # newer PyTorch names the option forward_sync_buffers (buffers are still synced once at init)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


# --------------------------------------------------------------------------- BatchNorm


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
        if not (self.training and active()):
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
