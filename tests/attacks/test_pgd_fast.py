"""PGD through the input-gradient view equals PGD through the plain model (issue 8 fast path)."""

from __future__ import annotations

import pytest
import torch

from robsal.attacks import pgd
from robsal.models import build_model


@pytest.mark.parametrize("norm, eps", [("l2", 0.8), ("linf", 8 / 255)])
def test_fast_pgd_equals_plain_pgd_on_a_resnet(norm, eps):
    torch.manual_seed(0)
    model = build_model("resnet18", ["a", "b", "c"], image_size=32)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model.train()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    runs = {}
    for fast in (False, True):
        g = torch.Generator().manual_seed(2)
        runs[fast] = pgd(model, x, y, eps=eps, norm=norm, steps=3, generator=g, fast=fast)
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    assert float((runs[True] - x).abs().max()) > 0  # the attack moved the images
    # the same forward bit for bit; the backward differs only in float order
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-4)
