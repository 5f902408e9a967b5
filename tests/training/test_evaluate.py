"""Evaluation metrics: closed-form classification metrics and robust accuracy on a linear model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robsal.config import load_config
from robsal.data import PreparedData
from robsal.training import classification_metrics, evaluate_model, robust_accuracy
from robsal.training.evaluate import eps_key, stratified_subset

CPU = torch.device("cpu")


def test_classification_metrics_closed_form():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["clean_accuracy"] == pytest.approx(6 / 8)
    assert m["per_class_accuracy"] == pytest.approx({"a": 0.75, "b": 0.5, "c": 1.0})
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]


def linear_data(n: int = 40, size: int = 8, seed: int = 0):
    """Images near 0.5 (so the [0, 1] box never binds for small eps) and a 2-class linear model."""
    rng = np.random.default_rng(seed)
    images = (0.5 + 0.08 * rng.standard_normal((n, 3, size, size)) * 255 / 255)
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 2, n).astype(np.int64)
    rows = [{"image_id": f"i{i}", "lesion_id": f"l{i}", "label": "ab"[labels[i]], "split": "test", "fold": pd.NA}
            for i in range(n)]
    data = PreparedData(images, labels, ["a", "b"], pd.DataFrame(rows))
    torch.manual_seed(seed)
    lin = nn.Linear(3 * size * size, 2)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    return data, nn.Sequential(nn.Flatten(), lin), lin


def test_robust_accuracy_matches_the_linear_closed_form():
    """Sample i survives an L2 attack of radius r iff its margin / ||w_y - w_o|| > r."""
    data, model, lin = linear_data()
    idx = np.arange(len(data))
    x, y = data.batch(idx)
    with torch.no_grad():
        logits = model(x)
        margin = logits[torch.arange(len(y)), y] - logits[torch.arange(len(y)), 1 - y]
        w = lin.weight
        dist = margin / (w[y] - w[1 - y]).norm(dim=1)  # signed L2 distance to the boundary
        direction = (w[y] - w[1 - y]) / (w[y] - w[1 - y]).norm(dim=1, keepdim=True)
    radii = {"r1": 0.2, "r2": 0.43, "r3": 0.47, "r4": 0.7}
    got = robust_accuracy(model, data, idx, radii, device=CPU, steps=20, random_start=False, progress=False)
    for key, r in radii.items():
        assert not ((dist - r).abs() < 1e-3).any()  # no sample on the fence
        optimum = x.flatten(1) - r * direction
        assert optimum.min() > 0 and optimum.max() < 1  # the [0, 1] box does not bind
        assert got[key] == pytest.approx(float((dist > r).float().mean())), key
    values = [got[k] for k in ("r1", "r2", "r3", "r4")]
    assert values == sorted(values, reverse=True)
    assert values[0] > values[-1]  # the radii actually span the margins


def test_robust_accuracy_is_non_increasing_in_eps_with_random_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    data, _, _ = linear_data()
    radii = {eps_key(e): e for e in (0.05, 0.1, 0.2, 0.4, 0.8)}
    got = robust_accuracy(model, data, np.arange(len(data)), radii, device=CPU, steps=5, progress=False)
    values = list(got.values())
    assert list(got) == ["0.05", "0.1", "0.2", "0.4", "0.8"]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_evaluate_model_reports_metrics_in_paper_units():
    data, model, _ = linear_data()
    cfg = load_config("tiny", ["device=cpu", "data.image_size=16", "data.classes=[a,b]"])
    m = evaluate_model(model, data, cfg, device=CPU, eps=[0, 1, 4], steps=5, max_images=20, progress=False)
    assert set(m["robust_accuracy"]) == {"0", "1", "4"}
    assert m["robust_eval"]["eps_l2"] == pytest.approx({"1": 16 / 224, "4": 64 / 224})
    assert m["robust_eval"]["n_images"] == 20
    assert m["n_test"] == len(data)
    sub = stratified_subset(data.labels, np.arange(len(data)), 20)
    x, y = data.batch(sub)
    with torch.no_grad():
        clean_sub = float((model(x).argmax(1) == y).float().mean())
    assert m["robust_accuracy"]["0"] == pytest.approx(clean_sub)
    assert m["robust_accuracy"]["0"] >= m["robust_accuracy"]["1"] >= m["robust_accuracy"]["4"]


def test_stratified_subset_alternates_classes():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    sub = stratified_subset(labels, np.arange(7), 4)
    assert sorted(labels[sub].tolist()) == [0, 0, 1, 2]
    assert stratified_subset(labels, np.arange(7), None).tolist() == list(range(7))


def test_attack_radius_scales_l2_with_image_size_only():
    from robsal.training.loop import attack_radius

    cfg = load_config("tiny", ["device=cpu", "data.image_size=64"])
    assert attack_radius(cfg, 4.0) == pytest.approx(4 * 64 / 224)
    cfg = load_config("tiny", ["device=cpu", "data.image_size=64", "adversary.norm=linf"])
    assert attack_radius(cfg, 8 / 255) == pytest.approx(8 / 255)


def test_autoattack_without_the_package_is_a_config_error():
    try:
        import autoattack  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("autoattack is installed")
    from robsal.errors import ConfigError

    data, model, _ = linear_data()
    cfg = load_config("tiny", ["device=cpu", "data.image_size=16", "robustness.autoattack=true"])
    with pytest.raises(ConfigError, match="autoattack"):
        evaluate_model(model, data, cfg, device=CPU, eps=[1], steps=1, max_images=4, progress=False)
