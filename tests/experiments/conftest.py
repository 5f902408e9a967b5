"""Fixtures for the sweep and fine-tuning tests: a tiny, fast sweep configuration."""

from __future__ import annotations

import pytest

# tiny preset, cut to what the sweep needs to exercise every stage in seconds: no head-only
# phase, PGD-2, robust accuracy at one eps on 6 images, Gradient maps only, no model-based
# metrics except the cheap ones (the metrics have their own tests).
SWEEP_OVERRIDES = [
    "device=cpu",
    "train.phase1.epochs=0",
    "adversary.steps=2",
    "robustness.eps=[1]",
    "robustness.steps=2",
    "robustness.max_images=6",
    "saliency.methods=[gradient]",
    "saliency.n_per_class=2",
    "metrics.faithfulness=false",
    "metrics.sanity=false",
    "metrics.sensitivity=false",
    "metrics.n_bootstrap=100",
]
GRID = "eps=0,1;seed=0,1"



@pytest.fixture(scope="module")
def sweep_cfg():
    from robsal.config import load_config

    return load_config("tiny", SWEEP_OVERRIDES)
