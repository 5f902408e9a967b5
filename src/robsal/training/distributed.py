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
  BatchNorm layers are converted for the duration of training (:mod:`robsal.training.syncbn`):
  to ``torch.nn.SyncBatchNorm`` on CUDA, and to :class:`CPUSyncBatchNorm` on the CPU
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
import dataclasses
import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from robsal.errors import ConfigError, UserError
from robsal.rundir import RunLock
from robsal.training.syncbn import CPUSyncBatchNorm, revert_batchnorm, sync_batchnorm  # noqa: F401 (re-exported)

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


# --------------------------------------------------------------------------- sharding strategies


@dataclass
class EpochSums:
    """An epoch's running sums on the device: summed loss, hits, and the first non-finite batch
    (index, -1 if none, and its loss value; None where every batch is checked on the host)."""

    loss: torch.Tensor
    correct: torch.Tensor
    first_bad: torch.Tensor | None
    bad_value: torch.Tensor | None

    @classmethod
    def zeros(cls, device: torch.device, *, track_bad: bool) -> EpochSums:
        """Empty sums; ``track_bad``: keep the first non-finite batch on the device (else None)."""
        return cls(
            loss=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.long),
            first_bad=torch.full((), -1, device=device, dtype=torch.long) if track_bad else None,
            bad_value=torch.zeros((), device=device) if track_bad else None,
        )

    def note_finite(self, batch: int, loss: torch.Tensor) -> None:
        """Remember ``batch`` and its loss if it is the first non-finite one (no host sync; no-op untracked)."""
        if self.first_bad is None or self.bad_value is None:
            return
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, batch), self.first_bad)
        self.bad_value = torch.where(bad, loss.float(), self.bad_value)


@dataclass(frozen=True)
class Share:
    """This process's rows ``lo:hi`` of one global batch ``batch`` (row indices into the data)."""

    batch: np.ndarray
    lo: int
    hi: int

    @property
    def idx(self) -> np.ndarray:
        return self.batch[self.lo : self.hi]


class OneProcess:
    """The sharding strategy of one process: every batch is all its own, nothing is communicated.

    :func:`robsal.training.loop.train_epoch` walks through its batches with a strategy;
    this one makes each step exactly what one process without a strategy would do.
    """

    world, rank = 1, 0
    checks_each_batch = True  # it may stop alone at the first non-finite loss

    def share(self, batch: np.ndarray) -> Share:
        return Share(batch, 0, len(batch))

    def attack_module(self, model: nn.Module) -> nn.Module:
        return model

    def wrap(self, model: nn.Module, device: torch.device, attack_model: nn.Module) -> nn.Module:
        """The module that trains: the attack's module (``model``, or its compiled version)."""
        return attack_model

    def synced_batchnorm(self, model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def augment(self, augment: Callable[..., torch.Tensor], x: torch.Tensor, share: Share, data: Any,
                generator: torch.Generator) -> torch.Tensor:
        return augment(x, generator=generator)

    def attack(self, adversary: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, share: Share,
               generator: torch.Generator) -> torch.Tensor:
        return adversary(model, x, y, generator=generator)  # model is back in train mode after

    def loss(self, logits: torch.Tensor, y: torch.Tensor, share: Share) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to back-propagate, the detached sum of the share's losses for the epoch's mean)."""
        loss = F.cross_entropy(logits, y)
        return loss, loss.detach() * len(share.idx)

    def reduce(self, sums: EpochSums, n_batches: int) -> EpochSums:
        return sums


class DataParallel(OneProcess):
    """The sharding strategy of process ``rank`` of ``world`` (``torchrun``; see the module docstring).

    Every process walks through the same global batches and keeps its contiguous share
    (:func:`shard_bounds`); augmentation parameters and PGD starts are drawn for the whole
    global batch (the generators advance as in one process) and sliced; the share's summed
    loss is scaled so that DDP's gradient average is the global batch mean; the epoch's sums
    and its first non-finite batch are reduced over the processes once, at its end.
    """

    checks_each_batch = False  # a process stopping alone would leave the others waiting

    def __init__(self, world: int, rank: int) -> None:
        self.world, self.rank = world, rank

    def share(self, batch: np.ndarray) -> Share:
        return Share(batch, *shard_bounds(len(batch), self.world, self.rank))

    def attack_module(self, model: nn.Module) -> nn.Module:
        return unwrap(model)  # the attack runs on the local share in eval mode, without communication

    def wrap(self, model: nn.Module, device: torch.device, attack_model: nn.Module) -> nn.Module:
        """DDP around ``model`` (one wrapper per phase: DDP registers the trainable parameters),
        compiled when ``attack_model`` is."""
        ddp = wrap(model, device)
        return ddp if attack_model is model else torch.compile(ddp)

    @contextlib.contextmanager
    def synced_batchnorm(self, model: nn.Module, device: torch.device) -> Iterator[None]:
        synced = sync_batchnorm(model, device)
        try:
            yield
        finally:
            if synced:
                revert_batchnorm(model)

    def augment(self, augment: Callable[..., torch.Tensor], x: torch.Tensor, share: Share, data: Any,
                generator: torch.Generator) -> torch.Tensor:
        """Augment the share ``x`` exactly as one process augments these rows of the global batch.

        robsal's :class:`~robsal.data.Augmenter` draws the parameters of the whole global batch
        (the generator advances as in one process) and applies this share's slice. Any other
        augment callable is applied to the whole global batch, of which the share is kept
        (same result, more work).
        """
        sample, transform = getattr(augment, "sample", None), getattr(augment, "transform", None)
        cfg = getattr(augment, "cfg", None)
        lo, hi = share.lo, share.hi
        if callable(sample) and callable(transform) and cfg is not None:
            if not cfg.enabled:  # Augmenter returns its input unchanged and draws nothing
                return x
            p = sample(len(share.batch), generator)
            if hi == lo:  # an empty share: the draw above keeps the generator in step
                return x
            local = type(p)(**{f.name: getattr(p, f.name)[lo:hi] for f in dataclasses.fields(p)})
            return transform(x, local)[0]
        xg, _ = data.batch(share.batch, x.device)
        return augment(xg, generator=generator)[lo:hi]

    def attack(self, adversary: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, share: Share,
               generator: torch.Generator) -> torch.Tensor:
        """PGD on the share from its slice of the random starts one process draws for the global batch."""
        starts = adversary.draw_start((len(share.batch), *x.shape[1:]), generator, x.device)
        return adversary(model, x, y, start=None if starts is None else starts[share.lo : share.hi])

    def loss(self, logits: torch.Tensor, y: torch.Tensor, share: Share) -> tuple[torch.Tensor, torch.Tensor]:
        share_sum = F.cross_entropy(logits, y, reduction="sum")
        return share_sum * loss_scale(len(share.batch), self.world), share_sum.detach()

    def reduce(self, sums: EpochSums, n_batches: int) -> EpochSums:
        """Sum the epoch's loss and hits over the processes; the earliest non-finite batch of any of them."""
        dev = sums.loss.device
        per_rank = torch.zeros(self.world, 4, dtype=torch.float64, device=dev)  # (W, [loss, hits, bad batch, value])
        bad = torch.where(sums.first_bad >= 0, sums.first_bad, torch.full_like(sums.first_bad, n_batches))
        per_rank[self.rank] = torch.stack(
            [sums.loss.double(), sums.correct.double(), bad.double(), sums.bad_value.double()])
        per_rank = all_sum(per_rank)
        k = int(per_rank[:, 2].argmin())
        earliest = int(per_rank[k, 2])
        return EpochSums(
            loss=per_rank[:, 0].sum().float(),
            correct=per_rank[:, 1].sum().long(),
            first_bad=torch.full((), earliest if earliest < n_batches else -1, dtype=torch.long),
            bad_value=per_rank[k, 3].float(),
        )


def strategy() -> OneProcess:
    """The sharding strategy of this process: data-parallel inside a process group of several, else one process."""
    return DataParallel(world_size(), rank()) if active() else OneProcess()


def strategy_of(model: nn.Module) -> OneProcess:
    """The sharding strategy of ``model``: data-parallel when it holds a DDP wrapper of several processes."""
    world, r = world_and_rank(model)
    return DataParallel(world, r) if world > 1 else OneProcess()
