"""Evaluation: clean accuracy, balanced and per-class accuracy, confusion matrix, robust accuracy.

Robust accuracy is measured under PGD (``cfg.robustness.steps`` steps, more than
the 7 of training; L2 by default) at every eps of ``cfg.robustness.eps`` (paper
units, converted with :meth:`robsal.config.Config.eps_l2`). A sample counts as
robust at eps only if PGD found no adversarial example at that eps *nor at any
smaller eps evaluated* (an example inside a smaller ball is inside every larger
one), which makes the reported robust accuracy a non-increasing function of eps
and a slightly stronger attack than independent per-eps runs.

Every function takes any ``nn.Module`` classifier that maps [0, 1] images to logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from robsal.errors import ConfigError, DataError
from robsal.training.loop import Adversary, attack_radius, autocast, show_progress
from robsal.utils import module_mode


def eps_key(eps: float) -> str:
    """The key of an eps in ``robust_accuracy`` (paper units): 4.0 -> "4", 0.5 -> "0.5"."""
    return f"{float(eps):g}"


def _batches(idx: np.ndarray, batch_size: int):
    for s in range(0, len(idx), batch_size):
        yield idx[s : s + batch_size]


@torch.no_grad()
def predict(
    model: nn.Module,
    data,  # robsal.data.PreparedData
    idx: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = False,
) -> np.ndarray:
    """Predicted class (N,) int64 of the rows ``idx`` (model in eval mode; its mode is restored)."""
    out = []
    with module_mode(model, training=False):
        for b in _batches(np.asarray(idx), batch_size):
            x, _ = data.batch(b, device)
            with autocast(device, amp):
                out.append(model(x).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, data, idx: np.ndarray, *, device: torch.device, batch_size: int = 128) -> float:
    """Clean accuracy on the rows ``idx`` in [0, 1]."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        raise ValueError("accuracy of an empty set of images")
    return float((predict(model, data, idx, device=device, batch_size=batch_size) == data.labels[idx]).mean())


@torch.no_grad()
def mean_loss(model: nn.Module, data, idx: np.ndarray, *, device: torch.device, batch_size: int = 128) -> float:
    """Mean cross-entropy on the rows ``idx`` (eval mode; the model's mode is restored)."""
    total, n = 0.0, 0
    with module_mode(model, training=False):
        for b in _batches(np.asarray(idx), batch_size):
            x, y = data.batch(b, device)
            total += float(F.cross_entropy(model(x).float(), y, reduction="sum"))
            n += len(y)
    return total / max(n, 1)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """clean_accuracy, balanced_accuracy, per_class_accuracy {class: recall}, confusion_matrix [true][pred]."""
    labels = list(range(len(classes)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [i for i in labels if support[i]]
    return {
        "clean_accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if present else None,
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "n_test": int(len(y_true)),
    }


def robust_accuracy(
    model: nn.Module,
    data,
    idx: np.ndarray,
    eps: Mapping[str, float],
    *,
    device: torch.device,
    norm: str = "l2",
    steps: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    random_start: bool = True,
    progress: bool = True,
    desc: str = "robust",
) -> dict[str, float]:
    """Accuracy under PGD at each eps of ``eps`` (key -> raw radius in [0, 1] pixel space).

    Returns key -> accuracy in [0, 1], non-increasing in the radius (see module docstring).
    The step size is ``2.5 * radius / steps`` (Madry et al.'s evaluation rule: the
    steps together can cross the ball and come back), with a random start.
    """
    idx = np.asarray(idx)
    if len(idx) == 0:
        raise ValueError("robust accuracy of an empty set of images")
    order = sorted(eps.items(), key=lambda kv: kv[1])
    gen = torch.Generator(device=device).manual_seed(int(seed))
    robust = {k: [] for k, _ in order}
    bar = tqdm(total=len(idx) * len(order), desc=desc, unit="img", leave=False, disable=not show_progress(progress))
    for b in _batches(idx, batch_size):
        x, y = data.batch(b, device)
        still = torch.ones(len(b), dtype=torch.bool, device=device)  # robust at every smaller eps
        for key, radius in order:
            adv = Adversary(radius, norm, steps, 2.5 * radius / steps, random_start)
            x_adv = adv(model, x, y, generator=gen)
            with torch.no_grad(), module_mode(model, training=False):
                ok = model(x_adv).argmax(1) == y
            still &= ok
            robust[key].append(still.clone().cpu())
            bar.update(len(b))
    bar.close()
    return {k: float(torch.cat(robust[k]).float().mean()) for k, _ in order}


def autoattack_accuracy(
    model: nn.Module,
    data,
    idx: np.ndarray,
    eps: Mapping[str, float],
    *,
    device: torch.device,
    norm: str = "l2",
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy under AutoAttack (Croce & Hein 2020), optional: needs the ``autoattack`` package.

    Runs the "custom" version with APGD-CE, APGD-DLR and Square, which work with
    3 classes (the standard version's targeted attacks need more than 3).
    """
    try:
        from autoattack import AutoAttack  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "robustness.autoattack: the autoattack package is not installed; "
            "pip install git+https://github.com/fra31/auto-attack or set robustness.autoattack=false"
        ) from None
    x, y = data.batch(np.asarray(idx), device)
    out = {}
    with module_mode(model, training=False):
        for key, radius in sorted(eps.items(), key=lambda kv: kv[1]):
            attack = AutoAttack(
                model, norm="L2" if norm == "l2" else "Linf", eps=radius, version="custom",
                attacks_to_run=["apgd-ce", "apgd-dlr", "square"], seed=seed, device=str(device), verbose=False,
            )
            adv = attack.run_standard_evaluation(x, y, bs=batch_size)
            with torch.no_grad():
                out[key] = float((model(adv).argmax(1) == y).float().mean())
    return out


def evaluate_model(
    model: nn.Module,
    data,
    cfg,  # robsal.config.Config
    *,
    device: torch.device,
    idx: np.ndarray | None = None,
    eps: Sequence[float] | None = None,
    steps: int | None = None,
    max_images: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> dict:
    """The ``metrics`` of model.json on the test split (or ``idx``).

    Clean metrics use every test image; robust accuracy the first ``max_images``
    (default ``cfg.robustness.max_images``) of a fixed, class-stratified order.
    ``eps`` (paper units, default ``cfg.robustness.eps``) are converted with ``cfg.eps_l2``
    (L2; for ``adversary.norm: linf`` they are raw Linf radii, see ``attack_radius``).
    """
    idx = data.indices("test") if idx is None else np.asarray(idx)
    if len(idx) == 0:
        raise DataError("the run has no test images to evaluate on; check data.test_per_class")
    bs = cfg.train.eval_batch_size
    y_pred = predict(model, data, idx, device=device, batch_size=bs)
    metrics = classification_metrics(data.labels[idx], y_pred, data.classes)
    eps = list(cfg.robustness.eps if eps is None else eps)
    max_images = cfg.robustness.max_images if max_images is None else max_images
    ridx = stratified_subset(data.labels, idx, max_images)
    radii = {eps_key(e): attack_radius(cfg, e) for e in eps if e > 0}
    robust = {}
    if radii:
        robust = robust_accuracy(
            model, data, ridx, radii, device=device, norm=cfg.adversary.norm,
            steps=steps or cfg.robustness.steps, batch_size=bs, seed=cfg.seed,
            progress=progress, desc=f"{desc} robust".strip(),
        )
    if any(e == 0 for e in eps):  # eps 0 = clean accuracy on the robust-evaluation subset
        pos = {int(i): k for k, i in enumerate(idx)}
        robust[eps_key(0)] = float(np.mean([y_pred[pos[int(r)]] == data.labels[r] for r in ridx]))
    metrics["robust_accuracy"] = dict(sorted(robust.items(), key=lambda kv: float(kv[0])))
    if cfg.robustness.autoattack and radii:
        metrics["autoattack_accuracy"] = autoattack_accuracy(
            model, data, ridx, radii, device=device, norm=cfg.adversary.norm, batch_size=bs, seed=cfg.seed
        )
    metrics["robust_eval"] = {
        "norm": cfg.adversary.norm,
        "steps": int(steps or cfg.robustness.steps),
        "step_size": "2.5 * eps / steps",
        "n_images": int(len(ridx)),
        "eps_l2" if cfg.adversary.norm == "l2" else "eps_linf": dict(radii),
    }
    return metrics


def stratified_subset(labels: np.ndarray, idx: np.ndarray, max_images: int | None) -> np.ndarray:
    """At most ``max_images`` of ``idx``, taking classes in turn (round robin) in index order."""
    idx = np.asarray(idx)
    if max_images is None or max_images >= len(idx):
        return idx
    per = {c: list(idx[labels[idx] == c]) for c in np.unique(labels[idx])}
    out: list[int] = []
    while len(out) < max_images:
        for c in sorted(per):
            if per[c] and len(out) < max_images:
                out.append(per[c].pop(0))
    return np.sort(np.asarray(out, dtype=np.int64))
