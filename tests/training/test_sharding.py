"""Sharding strategies of train_epoch (robsal.training.distributed): one process, data-parallel shares.

The torchrun test (test_ddp.py) checks that the data-parallel strategy trains the weights of
one process; these check the pieces without a process group.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from robsal.training import distributed
from robsal.training.distributed import DataParallel, EpochSums, OneProcess

from .conftest import TinyCNN


def test_one_process_keeps_every_batch_and_its_mean_loss():
    batch = np.array([7, 3, 5, 1, 9])
    share = OneProcess().share(batch)
    assert share.idx.tolist() == [7, 3, 5, 1, 9] and (share.lo, share.hi) == (0, 5)
    logits, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    loss, summed = OneProcess().loss(logits, y, share)
    assert torch.equal(loss, F.cross_entropy(logits, y))
    assert torch.equal(summed, F.cross_entropy(logits, y).detach() * 5)
    model = TinyCNN()
    assert OneProcess().attack_module(model) is model and OneProcess().wrap(model, torch.device("cpu"), model) is model
    assert distributed.strategy_of(model).world == 1 and type(distributed.strategy()) is OneProcess


@pytest.mark.parametrize("n, world", [(10, 4), (1, 2), (7, 3)])
def test_data_parallel_shares_tile_the_batch_and_their_losses_average_to_the_batch_mean(n, world):
    batch = np.arange(100, 100 + n)
    shares = [DataParallel(world, r).share(batch) for r in range(world)]
    assert np.concatenate([s.idx for s in shares]).tolist() == batch.tolist()
    logits = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 3
    losses = [DataParallel(world, r).loss(logits[s.lo : s.hi], y[s.lo : s.hi], s) for r, s in enumerate(shares)]
    # DDP averages over the processes: (1 / W) * sum of the scaled share losses = the global mean
    average = sum(loss for loss, _ in losses) / world
    torch.testing.assert_close(average, F.cross_entropy(logits, y), rtol=0, atol=1e-6)
    torch.testing.assert_close(sum(s for _, s in losses), F.cross_entropy(logits, y, reduction="sum"), rtol=0, atol=1e-5)


def test_epoch_sums_keep_the_first_non_finite_batch_on_the_device():
    sums = EpochSums.zeros(torch.device("cpu"), track_bad=True)
    for b, v in enumerate([1.0, 2.0, float("inf"), float("nan")]):
        sums.note_finite(b, torch.tensor(v))
    assert int(sums.first_bad) == 2 and float(sums.bad_value) == float("inf")
    untracked = EpochSums.zeros(torch.device("cpu"), track_bad=False)
    untracked.note_finite(0, torch.tensor(float("nan")))
    assert untracked.first_bad is None and untracked.bad_value is None
    # one process: reduce is the identity
    assert OneProcess().reduce(sums, 4) is sums
