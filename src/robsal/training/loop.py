"""One training epoch, standard or adversarial (paper Section 2, Appendix A).

Adversarial training follows Madry et al. and the paper's code: every training
batch is replaced by its PGD adversarial examples (the loss is computed on the
adversarial images only, no clean/adversarial mix). The attack runs with the
model in eval mode (see :mod:`robsal.attacks.pgd`), the update in train mode.

Randomness is derived from ``(seed, epoch)`` only (data order on the CPU,
augmentation and attack start on the device), so

* the standard and the robust model of a run see the same images in the same
  order with the same augmentations (the attack has its own generator, on the
  device; the augmentation parameters are drawn on the CPU), and
* training resumed at epoch ``e`` (e.g. a CV cell that reuses a cached phase 1, or a
  run resumed from its epoch checkpoint, :mod:`robsal.training.checkpoint`)
  continues exactly as an uninterrupted run would.

A non-finite training loss stops the epoch with :class:`NonFiniteLoss` (a user error:
the learning rate or the data need changing); the epoch is not kept.

Data-parallel training (``torchrun``; :mod:`robsal.training.distributed`): the epoch walks
through its batches with a sharding strategy (:func:`robsal.training.distributed.strategy_of`).
For a plain module it is :class:`~robsal.training.distributed.OneProcess` (every batch is
all this process's); when ``model`` is a ``DistributedDataParallel`` wrapper it is
:class:`~robsal.training.distributed.DataParallel`: every process walks through the same
global batches, keeps its contiguous share of each, draws the augmentation parameters and
PGD starts of the whole global batch (so the generators advance exactly as in one process)
and keeps its slice, and scales its summed loss so that DDP's gradient average is the mean
over the global batch. One process with the same ``batch_size`` gives the same weights up
to floating-point order.

``torch.compile`` (``train.compile``, :func:`compile_model`): ``model`` and
``attack_model`` may be compiled modules; the loop itself is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robsal.attacks import pgd
from robsal.attacks.pgd import random_start_delta
from robsal.data import Augmenter
from robsal.errors import ConfigError, UserError
from robsal.training import distributed

Augment = Callable[..., torch.Tensor]

# devices whose training loss is checked for NaN/inf after every batch; elsewhere the first
# bad batch is recorded on the device and checked at the end of the epoch (see train_epoch)
HOST_CHECKED = frozenset({"cpu"})


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; names the epoch and the batch (1-based)."""

    def __init__(self, message: str, *, epoch: int, batch: int, n_batches: int, value: float) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.n_batches, self.value = epoch, batch, n_batches, value

    @classmethod
    def at(cls, epoch: int, batch: int, n_batches: int, value: float) -> NonFiniteLoss:
        return cls(f"training loss is {value} at epoch {epoch}, batch {batch} of {n_batches}",
                   epoch=epoch, batch=batch, n_batches=n_batches, value=value)


@dataclass(frozen=True)
class Adversary:
    """PGD settings for training or evaluation; ``eps`` is the raw radius in [0, 1] pixel space."""

    eps: float
    norm: str = "l2"
    steps: int = 7
    step_size: float | None = None  # None = eps / 5
    random_start: bool = True

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return pgd(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,  # type: ignore[arg-type]
            step_size=self.step_size, random_start=self.random_start, generator=generator, start=start,
        )

    def draw_start(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor | None:
        """The random starts one process would draw for a batch of ``shape`` (None without random start)."""
        if not self.random_start or self.eps <= 0:
            return None
        return random_start_delta(shape, self.eps, self.norm, generator, device=device)


def attack_radius(cfg, eps: float) -> float:  # cfg: robsal.config.Config
    """Raw attack radius in [0, 1] pixel space for a config eps.

    L2: ``eps`` is in paper units (L2 at 224 px) and scales with the image side
    (``cfg.eps_l2``). Linf: a per-value bound does not depend on the image size, so
    ``eps`` is taken as the raw Linf radius (e.g. 8/255 = 0.0314).
    """
    return cfg.eps_l2(eps) if cfg.adversary.norm == "l2" else float(eps)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct 63-bit seed per (run seed, global epoch, stream); streams: 0 order, 1 augment, 2 attack."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + stream * 104_729) % (2**63 - 1)


def show_progress(progress: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU training stays float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` (``train.compile: true``); the parameters stay ``model``'s own.

    The compiled module shares ``model``'s parameters and buffers; save ``model`` itself
    (its ``state_dict`` has no ``_orig_mod.`` prefixes). On the CPU, TorchInductor
    compiles C++ and needs a compiler: without one this is a ConfigError instead of a
    failure at the first batch.
    """
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None and shutil.which("clang++") is None:
            raise ConfigError(
                f"train.compile=true needs a C++ compiler for torch.compile on the CPU ({cxx} not found); "
                "install g++ or set train.compile=false"
            )
    return torch.compile(model)


def train_epoch(
    model: nn.Module,
    data,  # robsal.data.PreparedData
    train_idx: np.ndarray,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    device: torch.device,
    adversary: Adversary | None = None,
    augment: Augment | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "",
    frozen_bn_eval: bool = False,
    attack_model: nn.Module | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``train_idx`` (shuffled by ``(seed, epoch)``; the last partial batch kept).

    Returns ``train_loss`` (mean cross-entropy of the inputs trained on), ``batch_accuracy``
    (accuracy on those inputs: clean+augmented for standard training, adversarial for
    adversarial training), ``epoch_seconds`` and ``images_per_second``. ``frozen_bn_eval``:
    BatchNorm layers whose parameters are all frozen stay in eval mode (fine-tuning, Appendix
    D; the paper's phase 1 lets them update, hence the default False). ``model`` may be a
    (compiled) DDP wrapper: this process then trains on its share of every global batch (see
    the module docstring) and the numbers are those of the global batches. ``attack_model``:
    the module PGD runs on (default: ``model`` without a DDP wrapper; ``fit`` passes the
    compiled module when ``train.compile`` is on).
    """
    order_gen, aug_gen, adv_gen = _generators(seed, epoch, device)
    perm = np.asarray(train_idx)[torch.randperm(len(train_idx), generator=order_gen).numpy()]
    shard = distributed.strategy_of(model)  # one process, or this process's share of each batch
    if attack_model is None:
        attack_model = shard.attack_module(model)
    model.train()
    if frozen_bn_eval:
        freeze_bn_statistics(model)
    n_batches = (len(perm) + batch_size - 1) // batch_size
    # NaN/inf guard. On the CPU the loss is checked before every update (reading a CPU
    # scalar costs nothing). On an accelerator, reading it would be a host-device sync per
    # batch that drains the queue of (PGD) kernels; instead the index and value of the first
    # bad batch are kept on the device and read once, at the end-of-epoch sync that exists
    # anyway. The epoch is discarded either way (nothing is checkpointed after a bad batch),
    # so checking late loses no good state. Data-parallel processes always check late
    # (see OneProcess.checks_each_batch).
    on_host = device.type in HOST_CHECKED and shard.checks_each_batch
    sums = distributed.EpochSums.zeros(device, track_bad=not on_host)
    bar = tqdm(total=len(perm), desc=desc, unit="img", leave=False, disable=not show_progress(progress))
    start = _clock(device)
    for b in range(n_batches):
        share = shard.share(perm[b * batch_size : (b + 1) * batch_size])
        x, y = data.batch(share.idx, device)  # (B, 3, S, S) float [0, 1], (B,) int64
        if augment is not None:
            x = shard.augment(augment, x, share, data, aug_gen)
        with autocast(device, amp):
            if adversary is not None and adversary.eps > 0:
                x = shard.attack(adversary, attack_model, x, y, share, adv_gen)
            logits = model(x)  # (B, K)
            loss, summed = shard.loss(logits.float(), y, share)
        if on_host and not bool(torch.isfinite(loss.detach())):
            bar.close()
            raise NonFiniteLoss.at(epoch, b + 1, n_batches, float(loss.detach()))
        sums.note_finite(b, loss.detach())  # without a host check: the first bad batch, on the device
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulate on the device: no host sync inside the loop
        sums.loss += summed
        sums.correct += (logits.detach().argmax(1) == y).sum()
        bar.update(len(share.batch))
    sums = shard.reduce(sums, n_batches)  # over the processes (one collective per epoch)
    seconds = _clock(device) - start
    bar.close()
    if sums.first_bad is not None and int(sums.first_bad) >= 0:
        raise NonFiniteLoss.at(epoch, int(sums.first_bad) + 1, n_batches, float(sums.bad_value))
    n = max(len(perm), 1)
    return {
        "train_loss": float(sums.loss) / n,
        "batch_accuracy": float(sums.correct) / n,
        "epoch_seconds": seconds,
        "images_per_second": len(perm) / max(seconds, 1e-9),
    }


def _generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, ...]:
    """The epoch's generators: data order and augmentation on the CPU, attack starts on ``device``."""
    order_gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
    aug_gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 1))  # Augmenter samples on the CPU
    adv_gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, 2))
    return order_gen, aug_gen, adv_gen


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def freeze_bn_statistics(model: nn.Module) -> int:
    """Put every BatchNorm layer whose affine parameters are all frozen into eval mode.

    A frozen layer then normalises with its stored running statistics instead of the
    batch's and leaves them unchanged. Returns how many layers were switched.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if all(not p.requires_grad for p in params):
                m.eval()
                n += 1
    return n


def make_augment(augment_cfg) -> Augment | None:  # augment_cfg: robsal.config.AugmentConfig
    """The data layer's batched augmenter (Appendix A augmentations), or None when disabled."""
    if not augment_cfg.enabled:
        return None
    return Augmenter(augment_cfg)
