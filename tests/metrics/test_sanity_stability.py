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


# --------------------------------------------------------------------------- per-image seeds


class _Tiny(nn.Module):
    """Two convs and a linear head at 16 px, 3 classes (non-linear: IG/SmoothGrad depend on the draws)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1, stride=2))
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.gelu(self.body(x)).flatten(1))


@pytest.mark.parametrize("method", ["integrated_gradients_uniform", "smoothgrad"])
def test_default_explain_fn_with_ids_reproduces_the_stored_maps(method):
    """Recomputed with image ids, a random method's map equals the saliency stage's
    (seeded per image from run seed and id), whatever the metrics' batching."""
    from robsal.config import load_config
    from robsal.metrics.explainer import compute_maps, default_explain_fn
    from robsal.saliency import explain, image_seed
    from robsal.saliency.visualize import reduce_channels

    torch.manual_seed(0)
    model = _Tiny().eval()
    cfg = load_config("tiny", ["seed=4", "saliency.ig_steps=6", "saliency.smoothgrad_samples=3"])
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 0, 1])
    ids = [f"ISIC_{i}" for i in range(5)]
    from robsal.saliency.run import method_options

    stored = explain(model, x, t, method, **method_options(cfg, method, ids))
    stored = np.asarray(reduce_channels(stored, "paper"), dtype=np.float64)  # sum over RGB of |a|
    fn = default_explain_fn(cfg)
    again = compute_maps(fn, model, x, t, method, batch_size=2, image_ids=ids)
    np.testing.assert_allclose(again, stored, rtol=1e-5, atol=1e-6 * stored.max())
    # one image alone, ids given: its stored map
    one = compute_maps(fn, model, x[3:4], t[3:4], method, image_ids=ids[3:4])
    np.testing.assert_allclose(one[0], stored[3], rtol=1e-5, atol=1e-6 * stored.max())
    # without ids the default is still deterministic (seeded per position)
    a = compute_maps(fn, model, x, t, method, batch_size=2)
    np.testing.assert_array_equal(a, compute_maps(fn, model, x, t, method, batch_size=2))
    # no config: run seed 0
    plain = default_explain_fn()(model, x[:2], t[:2], method, image_ids=ids[:2])
    ref = explain(model, x[:2], t[:2], method, seed=[image_seed(0, i) for i in ids[:2]])
    torch.testing.assert_close(plain, ref, rtol=0, atol=0)


def test_image_ids_reach_explain_fns_that_take_them():
    """sanity and max-sensitivity hand the ids on batch by batch; a 4-argument ExplainFn still works."""
    seen: list[list[str]] = []

    def with_ids(model, images, targets, method, image_ids=None):  # noqa: ANN001, ANN202
        seen.append(list(image_ids))
        return grad_explain(model, images, targets, method)

    torch.manual_seed(0)
    model = _Tiny().eval()
    x = torch.rand(3, 3, 16, 16)
    t = torch.tensor([0, 1, 2])
    ids = ["a", "b", "c"]
    res = sanity.cascading_randomisation(model, x, t, "gradient", with_ids, batch_size=2, image_ids=ids)
    assert seen and all(s in (["a", "b"], ["c"]) for s in seen)
    assert len(seen) == 2 * (1 + len(res.stages))
    seen.clear()
    stability.max_sensitivity(model, x, t, "gradient", with_ids, samples=2, batch_size=2, image_ids=ids)
    assert seen == [["a", "b"], ["c"]] * 3
    # an ExplainFn without an image_ids parameter is called as before
    old = sanity.cascading_randomisation(model, x, t, "gradient", grad_explain, batch_size=2, image_ids=ids)
    np.testing.assert_array_equal(old.spearman["body"], res.spearman["body"])
    with pytest.raises(ValueError, match="2 image ids for 3 images"):
        stability.max_sensitivity(model, x, t, "gradient", with_ids, image_ids=ids[:2])
