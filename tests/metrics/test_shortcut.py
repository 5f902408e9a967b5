"""The positive control's measurements on cases whose answer is known in closed form (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from robsal.experiments.control import compute_maps, probabilities
from robsal.metrics import shortcut as sc

S = 16
ROWS = slice(0, 3)  # where the toy "ruler" lies


class RegionReader(torch.nn.Module):
    """Class 0's logit = gain x (mean of the pixels in ``region`` - 0.8); the other classes' logits 0.

    It reads only ``region``: a bright artifact there (value 0.95) makes it predict class 0,
    anything darker (below 0.8) another class."""

    def __init__(self, region: np.ndarray, gain: float = 50.0) -> None:
        super().__init__()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.region
        mean = (x * r).sum(dim=(1, 2, 3)) / (3 * r.sum())
        z = torch.zeros(len(x), 3, device=x.device)
        return z + torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 3) * (self.gain * (mean - 0.8))[:, None]


def _region(rows: slice) -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[rows] = True
    return m


def _toy_pairs(n: int = 40, seed: int = 0):
    """(with, without) uint8 (n, 3, S, S) and the artifact masks: a bright band in the top rows."""
    rng = np.random.default_rng(seed)
    without = rng.uniform(0.3, 0.6, (n, 3, S, S))
    with_ = without.copy()
    with_[:, :, ROWS] = 0.95
    to8 = lambda a: (a * 255 + 0.5).astype(np.uint8)  # noqa: E731
    masks = np.broadcast_to(_region(ROWS), (n, S, S)).astype(np.uint8)
    return to8(with_), to8(without), masks


def test_reliance_of_hand_built_models():
    with_, without, _ = _toy_pairs()
    reader, ignorer = RegionReader(_region(ROWS)), RegionReader(_region(slice(8, 16)))
    r = sc.reliance_per_image(probabilities(reader, with_, "cpu"), probabilities(reader, without, "cpu"), 0)
    assert r["flip"].mean() == 1.0
    assert np.all(r["prob_drop"] > 0.99)
    i = sc.reliance_per_image(probabilities(ignorer, with_, "cpu"), probabilities(ignorer, without, "cpu"), 0)
    assert i["flip"].mean() == 0.0
    np.testing.assert_allclose(i["prob_drop"], 0.0, atol=1e-6)


def test_reliance_on_generator_counterfactuals():
    """A model that reads only the image border, where the generator puts rulers, flips on nearly every pair;
    one that reads only the centre flips on none."""
    from dataclasses import replace

    from robsal.data.counterfactual import SynthSource, model_input
    from robsal.data.synthetic import SynthSettings

    src = SynthSource(replace(SynthSettings(n=60, size=48, seed=0), planted_artifact="ruler", planted_class="mel",
                              planted_rate=0.9))
    size = 32
    pairs = [src.pair(r["image_id"], "ruler") for r in src.rows]
    with_ = np.stack([model_input(p.with_artifact, size) for p in pairs])
    without = np.stack([model_input(p.without, size) for p in pairs])

    class BorderReader(torch.nn.Module):
        """mel logit from the grey share (relative saturation < 0.2) of the 3-px strip along each side."""

        def __init__(self, border: bool) -> None:
            super().__init__()
            m = torch.zeros(size, size, dtype=torch.bool)
            if border:
                m[:3], m[-3:], m[:, :3], m[:, -3:] = True, True, True, True
            else:
                m[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = True
            self.border = border
            self.register_buffer("m", m)

        def forward(self, x):
            hi, lo = x.max(1).values, x.min(1).values
            grey = ((hi - lo) / hi.clamp_min(1e-3) < 0.2).float()  # (N, S, S)
            if self.border:
                strips = torch.stack([grey[:, :3].mean((1, 2)), grey[:, -3:].mean((1, 2)),
                                      grey[:, :, :3].mean((1, 2)), grey[:, :, -3:].mean((1, 2))], 1)
                score = strips.max(1).values - 0.2
            else:
                score = (x.mean(1) * self.m).sum((1, 2)) / self.m.sum() - 0.5
            z = torch.zeros(len(x), 3)
            z[:, 0] = 40 * score
            return z

    for model, lo, hi in ((BorderReader(True), 0.95, 1.0), (BorderReader(False), 0.0, 0.0)):
        r = sc.reliance_per_image(probabilities(model, with_, "cpu"), probabilities(model, without, "cpu"), 0)
        assert lo <= r["flip"].mean() <= hi


def test_auroc_closed_forms_and_sklearn():
    assert sc.auroc([3, 4], [1, 2]) == 1.0
    assert sc.auroc([1, 2], [3, 4]) == 0.0
    assert sc.auroc([1, 1], [1, 1, 1]) == 0.5
    assert np.isnan(sc.auroc([], [1.0]))
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 1, 30).round(1), rng.normal(0, 1, 40).round(1)  # with ties
    want = roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[a, b])
    assert sc.auroc(a, b) == pytest.approx(want, abs=1e-12)
    est, lo, hi = sc.auroc_ci(a, b, n_boot=300, seed=1)
    assert lo <= est <= hi and 0.5 < est < 1


def _explain_gradient(model, x, t, method, ids):
    from robsal.saliency import explain, reduce_channels

    return reduce_channels(explain(model, x, t, "gradient"), "paper")


def test_detection_auroc_mask_method_and_constant_method():
    """Reliant model: reads the artifact's region; reference model: reads elsewhere. On the same images a
    method whose map is the artifact's mask for the reliant model (here: its exact input gradient, which IS
    the mask) separates them perfectly (AUROC 1); a constant map cannot (0.5), and neither can a map that
    points at the artifact whatever the model does."""
    with_, _, masks = _toy_pairs()
    reliant, reference = RegionReader(_region(ROWS)), RegionReader(_region(slice(8, 16)))
    ids = [f"i{j}" for j in range(len(with_))]

    def shares(model, fn):
        return sc.artifact_share(compute_maps(fn, model, with_, 0, "m", ids, "cpu", 16), masks)["share"]

    g_rel, g_ref = shares(reliant, _explain_gradient), shares(reference, _explain_gradient)
    maps = compute_maps(_explain_gradient, reliant, with_, 0, "gradient", ids, "cpu", 16)
    np.testing.assert_allclose(maps / maps.max(axis=(1, 2), keepdims=True), masks)  # the gradient is the mask
    np.testing.assert_allclose(g_rel, 1.0)
    np.testing.assert_allclose(g_ref, 0.0)
    assert sc.auroc(g_rel, g_ref) == 1.0

    oracle = lambda model, x, t, m, i: model.region.expand(len(x), S, S)  # noqa: E731  the region the model reads
    assert sc.auroc(shares(reliant, oracle), shares(reference, oracle)) == 1.0
    constant = lambda model, x, t, m, i: torch.ones(len(x), S, S)  # noqa: E731
    c_rel, c_ref = shares(reliant, constant), shares(reference, constant)
    np.testing.assert_allclose(c_rel, 3 / 16)  # a uniform map's share is the artifact's area
    assert sc.auroc(c_rel, c_ref) == 0.5
    always = lambda model, x, t, m, i: torch.as_tensor(masks[: len(x)], dtype=torch.float32)  # noqa: E731
    assert sc.auroc(shares(reliant, always), shares(reference, always)) == 0.5


def test_verdict_rules():
    def test(p, effect, sign=+1):
        return {"name": "t", "kind": "diff", "p": p, "effect": effect, "sign": sign, "diff": effect,
                "low": effect, "high": effect, "n": 10}

    ts = sc.holm_verdict([test(0.01, 0.2), test(0.02, 0.1)], alpha=0.05)
    assert [t["p_holm"] for t in ts] == [0.02, 0.02] and all(t["supports"] for t in ts)
    assert sc.detection_verdict(ts, reliance_shown=True, comparable=True)[0] == sc.DETECTS
    assert sc.detection_verdict(ts, reliance_shown=False, comparable=True)[0] == sc.NO_SHORTCUT
    assert sc.detection_verdict(ts, reliance_shown=True, comparable=False, gate_reason="x")[0] == sc.NOT_COMPARABLE
    # Holm: the smaller p is doubled (0.02 x 2 = 0.04 < 0.05), the larger kept at >= it (0.06): one fails
    ts = sc.holm_verdict([test(0.02, 0.2), test(0.06, 0.1)], alpha=0.05)
    assert [t["p_holm"] for t in ts] == [0.04, 0.06]
    assert sc.detection_verdict(ts, reliance_shown=True, comparable=True)[0] == sc.DOES_NOT
    # significant with the wrong sign: does not detect, and says so
    ts = sc.holm_verdict([test(0.001, -0.2)], alpha=0.05)
    verdict, why = sc.detection_verdict(ts, reliance_shown=True, comparable=True)
    assert verdict == sc.DOES_NOT and "opposite sign" in why


def test_paired_test_and_mean_ci():
    a = {"x": 1.0, "y": 2.0, "z": float("nan"), "w": 5.0}
    b = {"x": 0.5, "y": 1.0, "z": 1.0}
    t = sc.paired_test(a, b, n_boot=200, alpha=0.05, seed=0, keys=("k",))
    assert t["n"] == 2 and t["diff"] == pytest.approx(0.75)
    m = sc.mean_ci([1, 1, np.nan, 1], n_boot=200, alpha=0.05, seed=0, keys=("k",))
    assert m == {"n": 3, "mean": 1.0, "low": 1.0, "high": 1.0}
