"""Random draws per image: an image's IG baselines and SmoothGrad noise depend on the run
seed and its id only, never on the batch, the order or the other images explained."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency

from robsal.config import load_config
from robsal.errors import ConfigError
from robsal.saliency import METHODS, explain, image_seed, integrated_gradients_with_delta, make_baseline
from robsal.saliency.run import compute_maps, method_options
from robsal.saliency.seeds import image_generators, per_image_seeds, position_seed

RANDOM = ["integrated_gradients_uniform", "integrated_gradients_gaussian", "smoothgrad"]
OPTS = {
    "integrated_gradients_uniform": {"n_steps": 8},
    "integrated_gradients_gaussian": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4, "noise": 0.2},
    "smoothgrad_sq": {"n_samples": 4, "noise": 0.2},
}


def rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """max |a - b| / max |b| (a relative error on the map's scale)."""
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    scale = b.abs().max().item()
    assert scale > 0
    return (a - b).abs().max().item() / scale


class _Data:
    """The part of PreparedData that ``compute_maps`` reads."""

    def __init__(self, images: torch.Tensor, ids: list[str], labels: list[int]) -> None:
        self.images = images
        self.image_ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)

    def batch(self, rows, device=None):  # noqa: ANN001, ANN201
        rows = np.asarray(rows)
        return self.images[torch.as_tensor(rows)], torch.as_tensor(self.labels[rows])


@pytest.fixture
def batch16() -> torch.Tensor:
    return torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(21))


# --------------------------------------------------------------------------- (c) image_seed


def test_image_seed_is_deterministic_and_depends_on_id_and_run_seed():
    s = image_seed(0, "ISIC_0024306")
    assert s == image_seed(0, "ISIC_0024306") == 2687163394290210863  # pinned: stable across versions
    assert 0 <= s < 2**63
    assert image_seed(1, "ISIC_0024306") != s
    assert image_seed(0, "ISIC_0024307") != s
    ids = [f"img{i}" for i in range(200)]
    assert len({image_seed(7, i) for i in ids}) == 200
    assert position_seed(0, 0) != image_seed(0, "0")  # positions and ids are separate domains


def test_image_seed_is_the_same_in_another_process():
    """Not Python's salted ``hash``: another interpreter (other PYTHONHASHSEED) agrees."""
    code = "from robsal.saliency.seeds import image_seed; print(image_seed(3, 'a/b c'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == image_seed(3, "a/b c")


def test_per_image_seeds_forms():
    assert per_image_seeds(5, 3) == [position_seed(5, i) for i in range(3)]
    assert per_image_seeds([1, 2, 3], 3) == per_image_seeds(np.array([1, 2, 3]), 3) == [1, 2, 3]
    assert per_image_seeds(torch.tensor([4, 5]), 2) == [4, 5]
    with pytest.raises(ValueError, match="2 per-image seeds for 3"):
        per_image_seeds([1, 2], 3)
    with pytest.raises(ValueError, match="integers"):
        per_image_seeds([1.5, 2], 2)
    assert len(set(per_image_seeds(None, 4))) == 4


def test_every_random_method_takes_a_seed():
    import inspect

    for m in METHODS.values():
        assert ("seed" in inspect.signature(m.fn).parameters) == m.random, m.name


# --------------------------------------------------------------------------- (a) alone == in a batch


@pytest.mark.parametrize("method", [*RANDOM, "smoothgrad_sq"])
def test_map_alone_equals_map_in_a_batch_of_16_at_another_position(small_cnn, batch16, method):
    """Image 0 explained alone == the same image at position 11 of 16 other images (and
    with batch_size 5, so it falls in another chunk), with its own seed each time."""
    seeds = [image_seed(0, f"id{i}") for i in range(16)]
    t = torch.arange(16) % 3
    alone = explain(small_cnn, batch16[:1], t[:1], method, seed=seeds[:1], **OPTS[method])
    order = torch.tensor([5, 3, 9, 1, 15, 2, 4, 6, 7, 8, 10, 0, 11, 12, 13, 14])  # image 0 at position 11
    perm_seeds = [seeds[k] for k in order]
    for batch_size in (None, 5):
        inside = explain(
            small_cnn, batch16[order], t[order], method, seed=perm_seeds, batch_size=batch_size, **OPTS[method]
        )
        assert rel_err(inside[11:12], alone) <= 1e-6, (method, batch_size)
        # and every other image equals its own map alone too
        for pos in (0, 15):
            k = int(order[pos])
            own = explain(small_cnn, batch16[k : k + 1], t[k : k + 1], method, seed=[seeds[k]], **OPTS[method])
            assert rel_err(inside[pos : pos + 1], own) <= 1e-6, (method, pos)


def test_compute_maps_is_independent_of_batch_size_order_and_selection(small_cnn, batch16, tmp_path):
    """Through the saliency stage: the map of a row is the same explained alone, among 16
    rows with saliency.batch_size 16, and in another order with batch_size 3."""
    ids = [f"ISIC_{i:07d}" for i in range(16)]
    data = _Data(batch16, ids, [i % 3 for i in range(16)])
    models = {"m": small_cnn}

    def maps(rows, bs):  # noqa: ANN001, ANN202
        cfg = load_config(
            "tiny",
            ["device=cpu", "seed=3", f"saliency.batch_size={bs}", "saliency.ig_steps=8",
             "saliency.smoothgrad_samples=4"],
        )
        _, raw = compute_maps(tmp_path, models, data, np.asarray(rows), RANDOM, cfg, device=torch.device("cpu"),
                              progress=False)
        return raw

    alone = maps([6], 16)
    full = maps(list(range(16)), 16)
    rows = list(range(15, -1, -1))  # reversed: image 6 at position 9
    shuffled = maps(rows, 3)
    for method in RANDOM:
        a = alone[method]["m"][0]
        assert rel_err(full[method]["m"][6], a) <= 1e-6, method
        assert rel_err(shuffled[method]["m"][rows.index(6)], a) <= 1e-6, method
        np.testing.assert_allclose(shuffled[method]["m"][::-1], full[method]["m"], rtol=1e-5, atol=1e-7 * a.max())


# --------------------------------------------------------------------------- (b) the id matters


@pytest.mark.parametrize("method", RANDOM)
def test_same_pixels_different_ids_get_different_draws(small_cnn, method, tmp_path):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).repeat(2, 1, 1, 1)
    data = _Data(x, ["lesion_a", "lesion_b"], [1, 1])
    cfg = load_config("tiny", ["device=cpu", "saliency.ig_steps=8", "saliency.smoothgrad_samples=4"])
    _, raw = compute_maps(tmp_path, {"m": small_cnn}, data, np.arange(2), [method, "gradient"], cfg,
                          device=torch.device("cpu"), progress=False)
    m = raw[method]["m"]
    assert rel_err(m[0], m[1]) > 1e-3, method  # other noise / baseline
    assert np.array_equal(raw["gradient"]["m"][0], raw["gradient"]["m"][1])  # deterministic: same map
    # and the same id gives the same draws (the seed is a function of the id)
    again = explain(small_cnn, x, torch.tensor([1, 1]), method, seed=[image_seed(cfg.seed, "lesion_a")] * 2,
                    **OPTS[method])
    assert torch.equal(again[0], again[1])


def test_method_options_seeds_per_image_id():
    cfg = load_config("tiny", ["seed=9", "saliency.ig_baselines=3"])
    opts = method_options(cfg, "integrated_gradients_gaussian", ["a", "b"])
    assert opts["seed"] == [image_seed(9, "a"), image_seed(9, "b")]
    assert opts["n_baselines"] == 3
    assert method_options(cfg, "smoothgrad", ["a"])["seed"] == [image_seed(9, "a")]
    assert method_options(cfg, "smoothgrad")["seed"] == 9  # no ids: explain derives per position
    assert "seed" not in method_options(cfg, "gradient", ["a"])


def test_ig_baselines_is_validated():
    with pytest.raises(ConfigError, match="saliency.ig_baselines"):
        load_config("tiny", ["saliency.ig_baselines=0"])
    assert load_config("tiny").saliency.ig_baselines == 1


def test_int_seed_means_per_position_seeds(small_cnn, images):
    t = torch.tensor([0, 1, 2, 0])
    for method in RANDOM:
        a = explain(small_cnn, images, t, method, seed=5, **OPTS[method])
        b = explain(small_cnn, images, t, method, seed=per_image_seeds(5, 4), batch_size=3, **OPTS[method])
        assert rel_err(a, b) <= 1e-6, method
        with pytest.raises(ValueError, match="per-image seeds"):
            explain(small_cnn, images, t, method, seed=[1, 2], **OPTS[method])


# --------------------------------------------------------------------------- SmoothGrad == Captum


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq"])
def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise(small_cnn, images, nt_type, monkeypatch):
    """Our per-image SmoothGrad == Captum's NoiseTunnel(Saliency) fed the same noise
    (its ``torch.normal`` replaced by image i's draws), image by image."""
    k, sigma = 6, 0.25
    seeds = [image_seed(0, f"x{i}") for i in range(4)]
    t = torch.tensor([2, 0, 1, 1])
    ours = explain(small_cnn, images, t, nt_type, seed=seeds, n_samples=k, noise=sigma, inner_batch=5)
    for i in range(4):
        g = torch.Generator().manual_seed(seeds[i])
        eps = torch.stack([torch.randn(images.shape[1:], generator=g) for _ in range(k)])  # (S, C, H, W)

        def normal(mean, std, *args, _eps=eps, **kwargs):  # noqa: ANN001, ANN202
            assert std.shape == _eps.shape and torch.allclose(std, torch.full_like(std, sigma))
            return mean + std * _eps

        with monkeypatch.context() as mp:
            mp.setattr(torch, "normal", normal)
            ref = NoiseTunnel(Saliency(small_cnn)).attribute(
                images[i : i + 1].clone().requires_grad_(True),
                nt_type=nt_type, nt_samples=k, nt_samples_batch_size=k, stdevs=sigma, target=int(t[i]), abs=False,
            ).detach()
        assert rel_err(ours[i : i + 1], ref) <= 1e-6, (nt_type, i)


# --------------------------------------------------------------------------- (d), (e) several baselines


def _single_baseline_maps(model, x, t, baseline, seeds, k, n_steps):  # noqa: ANN001, ANN202
    """k explicit single-baseline IG calls: baseline j of image i = draw j of its generator."""
    gens = image_generators(seeds)
    bases = [make_baseline(x, baseline, generator=gens) for _ in range(k)]
    maps = [explain(model, x, t, "integrated_gradients", baseline=b, n_steps=n_steps) for b in bases]
    return bases, maps


@pytest.mark.parametrize("baseline", ["uniform", "gaussian"])
def test_ig_baselines_average_single_baseline_attributions(small_cnn, images, baseline):
    k, steps = 3, 8
    t = torch.tensor([0, 1, 2, 0])
    seeds = [image_seed(1, f"im{i}") for i in range(4)]
    method = f"integrated_gradients_{baseline}"
    avg = explain(small_cnn, images, t, method, n_steps=steps, n_baselines=k, seed=seeds)
    bases, maps = _single_baseline_maps(small_cnn, images, t, baseline, seeds, k, steps)
    assert rel_err(avg, torch.stack(maps).mean(0)) <= 1e-5
    # the first of the k baselines is the n_baselines = 1 baseline (nested draws)
    one = explain(small_cnn, images, t, method, n_steps=steps, seed=seeds)
    assert rel_err(one, maps[0]) <= 1e-6
    assert rel_err(maps[1], maps[0]) > 1e-2  # really different baselines
    # per image: image 2 alone with k baselines == its row of the batch
    alone = explain(small_cnn, images[2:3], t[2:3], method, n_steps=steps, n_baselines=k, seed=seeds[2:3])
    assert rel_err(alone, avg[2:3]) <= 1e-6


@pytest.mark.parametrize("baseline", ["uniform", "gaussian"])
def test_ig_completeness_per_baseline_and_averaged(smooth_cnn, images, baseline):
    """Sum of attributions = f(x) - f(baseline) (within 1 % + 1e-6) at 200 steps for each
    per-image baseline, and for their average against the mean f(baseline)."""
    k, steps = 3, 200
    t = torch.tensor([0, 1, 2, 0])
    seeds = [image_seed(2, f"im{i}") for i in range(4)]
    bases, maps = _single_baseline_maps(smooth_cnn, images, t, baseline, seeds, k, steps)
    rows = torch.arange(4)
    with torch.no_grad():
        fx = smooth_cnn(images)[rows, t]
        fb = torch.stack([smooth_cnn(b)[rows, t] for b in bases])  # (k, N)

    def complete(total: torch.Tensor, gap: torch.Tensor) -> bool:
        return bool(((total - gap).abs() <= 0.01 * gap.abs() + 1e-6).all())

    for j in range(k):
        gap = fx - fb[j]
        assert gap.abs().max() > 1e-2  # not a trivially zero comparison
        assert complete(maps[j].sum(dim=(1, 2, 3)), gap), j
    method = f"integrated_gradients_{baseline}"
    attr, delta = integrated_gradients_with_delta(
        smooth_cnn, images, t, baseline=baseline, n_steps=steps, n_baselines=k, seed=seeds
    )
    gap = fx - fb.mean(0)
    total = attr.sum(dim=(1, 2, 3))
    assert complete(total, gap)
    torch.testing.assert_close(delta, total - gap, atol=1e-5, rtol=1e-3)
    # the same attributions as the method explain runs
    assert rel_err(explain(smooth_cnn, images, t, method, n_steps=steps, n_baselines=k, seed=seeds), attr) <= 1e-6
