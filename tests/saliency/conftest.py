"""Small models for the saliency tests (all on CPU, 16-64 px)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """16 px input: conv(3->6) ReLU conv(6->8, stride 2) ReLU -> (8, 8, 8) -> flatten -> linear(512->3)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            act(),
            nn.Conv2d(6, 8, 3, padding=1, stride=2),
            act(),
        )
        self.fc = nn.Linear(8 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class Linear(nn.Module):
    """f_k(x) = sum(w_k * x) + b_k: attributions have closed forms."""

    def __init__(self, shape: tuple[int, int, int], classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, *shape, generator=g))
        self.b = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.w) + self.b


class RegionModel(nn.Module):
    """Two classes; logit 0 = 10 x mean of the top-left ``r`` x ``r`` patch, logit 1 = 0.

    It looks at nothing else, so occlusion must attribute only to that patch (and to
    the windows that overlap it)."""

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10 * x[:, :, : self.r, : self.r].mean(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


@pytest.fixture
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def smooth_cnn() -> SmallCNN:
    """SmallCNN with GELU: a smooth path integrand, so quadrature error is small."""
    torch.manual_seed(0)
    return SmallCNN(nn.GELU).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet32():
    from robsal.models import build_model

    torch.manual_seed(0)
    return build_model("resnet18", ["a", "b", "c"], image_size=32).eval()


def hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n
