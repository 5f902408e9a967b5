"""Cascading randomisation, seed stability and max-sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robsal.metrics import sanity, stability
from robsal.models import build_model


def grad_explain(model, images, targets, method):  # noqa: ANN001
    """Stub explanation: the plain input gradient of the target logit."""
    x = images.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, targets.view(-1, 1)).sum(), x)
    return g


def image_explain(model, images, targets, method):  # noqa: ANN001
    """A model-independent 'explanation' (an edge-detector-like map): must fail the sanity check."""
    return images.detach().clone()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", ["a", "b", "c"], image_size=32).eval()


def test_stages_cascade_from_the_logits(resnet):
    stages = sanity.randomisation_stages(resnet)
    assert [s for s, _ in stages] == ["g5", "g4", "g3", "g2", "g1"]
    assert stages[0][1] == ["net.fc"]
    assert stages[-1][1][-3:] == ["net.conv1", "net.bn1", "net.layer1"]


def test_randomised_copy_touches_only_the_named_groups(resnet):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    rnd = sanity.randomised_copy(resnet, ["net.fc", "net.layer4"], seed=1)
    after = rnd.state_dict()
    for k, v in before.items():
        same = torch.equal(v, after[k])
        if k.startswith(("net.fc.weight", "net.layer4.0.conv1.weight")):
            assert not same, k
        elif not k.startswith(("net.fc", "net.layer4")):
            assert same, k
    for k, v in resnet.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    again = sanity.randomised_copy(resnet, ["net.fc"], seed=1)
    assert torch.equal(again.net.fc.weight, rnd.net.fc.weight)  # seeded


def test_ssim_identity_and_range():
    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16))
    np.testing.assert_allclose(sanity.ssim_maps(a, a * 3.0), 1.0)  # scale-free
    assert (sanity.ssim_maps(a, rng.random((2, 16, 16))) < 0.5).all()


def test_model_independent_explanation_fails_and_gradient_decorrelates(resnet):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0, 1])
    bad = sanity.cascading_randomisation(resnet, x, t, "image", image_explain, seed=0)
    for s in bad.stages:
        np.testing.assert_allclose(bad.spearman[s], 1.0)
        np.testing.assert_allclose(bad.ssim[s], 1.0)
    assert not bad.passed
    good = sanity.cascading_randomisation(resnet, x, t, "gradient", grad_explain, seed=0)
    assert good.stages == ["g5", "g4", "g3", "g2", "g1"]
    # untrained ResNets share architecture-driven gradient structure (Adebayo et al. 2018 saw
    # the same), so rank correlation stays well above 0; SSIM of the structure drops
    assert np.mean(good.spearman["g1"]) < 0.9
    assert np.mean(good.ssim["g1"]) < 0.5
    summ = good.summary()
    assert summ["n_images"] == 2 and set(summ["spearman"]) == set(good.stages)
    assert summ["passed"] == good.passed


def test_seed_groups_and_pairwise_similarity():
    assert stability.seed_groups({"standard": 0.0, "robust": 4.0}) == {}
    assert stability.seed_groups({"s0": 0, "s1": 0.0, "r": 4}) == {0.0: ["s0", "s1"]}
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16))
    sims = stability.pairwise_similarity([a, a.copy(), a * 2])
    np.testing.assert_allclose(sims["seed_spearman"], 1.0)
    np.testing.assert_allclose(sims["seed_ssim"], 1.0)
    sims2 = stability.pairwise_similarity([a, rng.random((3, 16, 16))])
    assert (np.abs(sims2["seed_spearman"]) < 0.3).all()


def test_max_sensitivity_known_answers():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x = torch.rand(2, 3, 8, 8)
    t = torch.tensor([0, 1])
    # a linear model's gradient does not depend on the input: sensitivity 0
    ms = stability.max_sensitivity(lin, x, t, "gradient", grad_explain, radius=0.05, samples=3)
    np.testing.assert_allclose(ms, 0.0, atol=1e-7)
    # the identity "explanation" moves by exactly the (clipped) noise
    x2 = torch.full((1, 3, 8, 8), 0.5)
    ms2 = stability.max_sensitivity(lin, x2, t[:1], "image", image_explain, radius=0.01, samples=2, seed=0)
    base = 1.5 * np.sqrt(64)
    assert 0 < ms2[0] <= 3 * 0.01 * np.sqrt(64) / base + 1e-9


def test_in_place_cascade_equals_fresh_copies(resnet):
    stages = sanity.randomisation_stages(resnet)
    import copy

    rnd = copy.deepcopy(resnet)
    done: list[str] = []
    for _, prefixes in stages[:3]:
        sanity.randomise_(rnd, [p for p in prefixes if p not in done], seed=4)
        done = list(prefixes)
    fresh = sanity.randomised_copy(resnet, stages[2][1], seed=4)
    for (k, a), b in zip(rnd.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
