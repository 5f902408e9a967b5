"""Fixtures for the training tests: a small separable toy dataset and a tiny CNN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robsal.data import PreparedData


def make_toy_data(
    n_train: int = 20, n_test: int = 10, n_val: int = 2, size: int = 16, seed: int = 0,
    classes: tuple[str, ...] = ("mel", "nv", "bkl"), signal: float = 0.12, noise: float = 0.15,
    n_folds: int = 2,
) -> PreparedData:
    """Class k raises channel k by ``signal`` over a central square; Gaussian pixel noise on top.

    ``n_*`` are per class. Train rows get folds 1..n_folds round robin.
    """
    rng = np.random.default_rng(seed)
    rows, images, labels = [], [], []
    for split, per in (("train", n_train), ("val", n_val), ("test", n_test)):
        for k in range(len(classes)):
            for i in range(per):
                img = 0.5 + noise * rng.standard_normal((3, size, size))
                q = size // 4
                img[k % 3, q : size - q, q : size - q] += signal
                images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
                labels.append(k)
                iid = f"{split}_{k}_{i}"
                fold = (i % n_folds) + 1 if split == "train" else pd.NA
                rows.append({"image_id": iid, "lesion_id": iid, "label": classes[k], "split": split, "fold": fold})
    splits = pd.DataFrame(rows)
    splits["fold"] = splits["fold"].astype("Int64")
    return PreparedData(np.stack(images), np.asarray(labels, dtype=np.int64), list(classes), splits)


class TinyCNN(nn.Module):
    """conv-BN-ReLU-pool-linear classifier on [0, 1] images, with an ``fc`` head."""

    def __init__(self, classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x - 0.5))


@pytest.fixture
def toy_data() -> PreparedData:
    return make_toy_data()

