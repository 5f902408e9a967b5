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

Data-parallel training (``torchrun``; :mod:`robsal.training.distributed`): when ``model``
is a ``DistributedDataParallel`` wrapper, every process walks through the same global
batches, keeps its contiguous share of each, draws the augmentation parameters and PGD
starts of the whole global batch (so the generators advance exactly as in one process) and
keeps its slice, and scales its summed loss so that DDP's gradient average is the mean
over the global batch. One process with the same ``batch_size`` gives the same weights up
to floating-point order.

``torch.compile`` (``train.compile``, :func:`compile_model`): ``model`` and
``attack_model`` may be compiled modules; the loop itself is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from robsal.attacks import pgd
from robsal.attacks.pgd import random_start_delta
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
    """Train ``model`` for one pass over ``train_idx`` (shuffled by ``(seed, epoch)``).

    Returns ``train_loss`` (mean cross-entropy of the inputs trained on), ``batch_accuracy``
    (accuracy on those inputs: clean+augmented for standard training, adversarial for
    adversarial training), ``epoch_seconds`` and ``images_per_second``.
    The last partial batch is kept (the paper's data are 2400 images; nothing is dropped).
    ``frozen_bn_eval``: BatchNorm layers whose parameters are all frozen stay in eval mode
    (their running statistics do not drift); used by layer-group fine-tuning (Appendix D).
    The paper's phase 1 (and the original code) let them update, so the default is False.

    ``model`` may be a ``DistributedDataParallel`` wrapper (possibly compiled): this process
    then trains on its share of every global batch of ``batch_size`` (see the module
    docstring); the returned numbers are those of the global batches. ``attack_model``: the
    module PGD runs on (default: ``model`` without its DDP wrapper; the attack runs on the
    local share in eval mode and needs no communication); ``fit`` passes the compiled
    module when ``train.compile`` is on.
    """
    order_gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
    aug_gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 1))  # Augmenter samples on the CPU
    adv_gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, 2))
    perm = np.asarray(train_idx)[torch.randperm(len(train_idx), generator=order_gen).numpy()]
    world, rank = distributed.world_and_rank(model)
    sharded = world > 1
    if attack_model is None:
        attack_model = distributed.unwrap(model) if sharded else model
    model.train()
    if frozen_bn_eval:
        freeze_bn_statistics(model)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n_batches = (len(perm) + batch_size - 1) // batch_size
    # NaN/inf guard. On the CPU the loss is checked before every update (reading a CPU
    # scalar costs nothing). On an accelerator, reading it would be a host-device sync per
    # batch that drains the queue of (PGD) kernels; instead the index and value of the first
    # bad batch are kept on the device and read once, at the end-of-epoch sync that exists
    # anyway. The epoch is discarded either way (nothing is checkpointed after a bad batch),
    # so checking late loses no good state.
    # Data-parallel: a process that stopped alone would leave the others waiting in the next
    # collective, so the check is deferred and made on the first bad batch of any process.
    on_host = device.type in HOST_CHECKED and not sharded
    first_bad = None if on_host else torch.full((), -1, device=device, dtype=torch.long)
    bad_value = None if on_host else torch.zeros((), device=device)
    bar = tqdm(total=len(perm), desc=desc, unit="img", leave=False, disable=not show_progress(progress))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for b in range(n_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if sharded:
            gidx, (lo, hi) = idx, distributed.shard_bounds(len(idx), world, rank)
            idx = gidx[lo:hi]  # this process's share of the global batch gidx
        x, y = data.batch(idx, device)  # (B, 3, S, S) float [0, 1], (B,) int64
        if augment is not None:
            if not sharded:
                x = augment(x, generator=aug_gen)
            else:
                x = _augment_share(augment, x, data, gidx, lo, hi, aug_gen, device)
        with autocast(device, amp):
            if adversary is not None and adversary.eps > 0:
                if not sharded:
                    x = adversary(attack_model, x, y, generator=adv_gen)  # model is back in train mode after
                else:  # the starts of the whole global batch (as one process draws them), this share's slice
                    starts = adversary.draw_start((len(gidx), *x.shape[1:]), adv_gen, device)
                    x = adversary(attack_model, x, y, start=None if starts is None else starts[lo:hi])
            logits = model(x)  # (B, K)
            if not sharded:
                loss = F.cross_entropy(logits.float(), y)
            else:  # summed over the share, scaled so that DDP's average is the global batch mean
                share_sum = F.cross_entropy(logits.float(), y, reduction="sum")
                loss = share_sum * distributed.loss_scale(len(gidx), world)
        if on_host:
            if not bool(torch.isfinite(loss.detach())):
                bar.close()
                raise NonFiniteLoss.at(epoch, b + 1, n_batches, float(loss.detach()))
        else:
            bad = ~torch.isfinite(loss.detach()) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, b), first_bad)
            bad_value = torch.where(bad, loss.detach().float(), bad_value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulate on the device: no host sync inside the loop
        loss_sum += share_sum.detach() if sharded else loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
        bar.update(len(gidx) if sharded else len(idx))
    if sharded:  # global sums, and the first bad batch of any process (one collective per epoch)
        first_bad, bad_value, loss_sum, correct = _reduce_epoch(
            first_bad, bad_value, loss_sum, correct, n_batches, world, rank)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    if first_bad is not None and int(first_bad) >= 0:
        raise NonFiniteLoss.at(epoch, int(first_bad) + 1, n_batches, float(bad_value))
    n = max(len(perm), 1)
    return {
        "train_loss": float(loss_sum) / n,
        "batch_accuracy": float(correct) / n,
        "epoch_seconds": seconds,
        "images_per_second": len(perm) / max(seconds, 1e-9),
    }


def _augment_share(
    augment: Augment, x: torch.Tensor, data, gidx: np.ndarray, lo: int, hi: int,
    generator: torch.Generator, device: torch.device,
) -> torch.Tensor:
    """Augment the share ``x`` = rows ``lo:hi`` of the global batch ``gidx`` exactly as one process would.

    robsal's :class:`~robsal.data.Augmenter` draws the parameters of the whole global batch
    (the generator advances as in one process) and applies this share's slice. Any other
    augment callable is applied to the whole global batch, of which the share is kept
    (same result, more work).
    """
    sample, transform = getattr(augment, "sample", None), getattr(augment, "transform", None)
    cfg = getattr(augment, "cfg", None)
    if callable(sample) and callable(transform) and cfg is not None:
        if not cfg.enabled:  # Augmenter returns its input unchanged and draws nothing
            return x
        p = sample(len(gidx), generator)
        if hi == lo:  # an empty share: the draw above keeps the generator in step
            return x
        local = type(p)(**{f.name: getattr(p, f.name)[lo:hi] for f in dataclasses.fields(p)})
        return transform(x, local)[0]
    xg, _ = data.batch(gidx, device)
    return augment(xg, generator=generator)[lo:hi]


def _reduce_epoch(
    first_bad: torch.Tensor, bad_value: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor,
    n_batches: int, w: int, r: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum the epoch's loss and hits over the ``w`` processes; the earliest non-finite batch of any of them."""
    per_rank = torch.zeros(w, 4, dtype=torch.float64, device=loss_sum.device)  # (W, [loss, hits, bad batch, value])
    bad = torch.where(first_bad >= 0, first_bad, torch.full_like(first_bad, n_batches))
    per_rank[r] = torch.stack([loss_sum.double(), correct.double(), bad.double(), bad_value.double()])
    per_rank = distributed.all_sum(per_rank)
    k = int(per_rank[:, 2].argmin())
    earliest = int(per_rank[k, 2])
    return (
        torch.full((), earliest if earliest < n_batches else -1, dtype=torch.long),
        per_rank[k, 3].float(),
        per_rank[:, 0].sum().float(),
        per_rank[:, 1].sum().long(),
    )


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
    try:
        from robsal.data import Augmenter  # type: ignore[attr-defined]
    except ImportError:  # the data layer ships it; without it training runs unaugmented
        return None
    return Augmenter(augment_cfg)
