"""Sanity check by cascading parameter randomisation (Adebayo et al. 2018).

Starting from the logits, the layer groups of the model are re-initialised one after the
other (ResNet: group 5 = fc, 4 = layer4, 3 = layer3, 2 = layer2, 1 = stem + layer1; the
groups of paper Appendix D, :func:`robsal.models.groups_of`), cumulatively. After each
stage the maps of the same images are recomputed and compared with the original model's
maps by Spearman rank correlation and SSIM (``skimage.metrics.structural_similarity`` on
maps scaled to max 1, data range 1). A method that explains the *model* must lose its
similarity as the model is destroyed.

The *random-pair floor* is the similarity between the original maps of two different
images (image i vs image i+1, cyclically): what two unrelated maps of this method share
(e.g. a centre bias). A method *passes* when, with every group randomised, both its mean
Spearman and its mean SSIM fall to or below the floor's mean. Re-initialisation uses each
layer's own ``reset_parameters`` (Kaiming-uniform convs/linears; BatchNorm back to the
identity with fresh running statistics), seeded per layer so that a layer's new weights
are the same at every stage of the cascade.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from skimage.metrics import structural_similarity

from robsal.errors import ConfigError
from robsal.metrics.alignment import spearman_maps
from robsal.metrics.explainer import ExplainFn, compute_maps
from robsal.metrics.stats import stable_seed
from robsal.models import groups_of


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM between maps a[i] and b[i] (N, H, W), each scaled to max 1 first: (N,) in [-1, 1].

    An all-zero map stays zero. Window 7 px (or the largest odd size that fits).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    side = min(a.shape[1:])
    win = min(7, side if side % 2 == 1 else side - 1)
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        x = a[i] / a[i].max() if a[i].max() > 0 else a[i]
        y = b[i] / b[i].max() if b[i].max() > 0 else b[i]
        out[i] = structural_similarity(x, y, data_range=1.0, win_size=win)
    return out


def randomisation_stages(model: torch.nn.Module) -> list[tuple[str, list[str]]]:
    """[(label, module-name prefixes randomised so far)], from the logits down.

    ResNets use the Appendix D groups (labels ``g5`` .. ``g1``). Other models fall back to
    the top-level children of ``model.net`` (or of ``model``) that hold parameters.
    """
    try:
        groups = groups_of(model)
        order = [(f"g{g}", groups[g]) for g in sorted(groups, reverse=True)]
    except (ConfigError, AttributeError):
        net = getattr(model, "net", model)
        prefix = "net." if net is not model else ""
        kids = [n for n, m in net.named_children() if any(True for _ in m.parameters())]
        order = [(n, [prefix + n]) for n in reversed(kids)]
    stages, done = [], []
    for label, prefixes in order:
        done = done + list(prefixes)
        stages.append((label, list(done)))
    return stages


def randomise_(model: torch.nn.Module, prefixes: list[str], seed: int) -> torch.nn.Module:
    """Re-initialise, in place, the modules of ``model`` under ``prefixes`` (seeded per layer)."""
    devices = [p.device for p in model.parameters()][:1]
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        for name, mod in model.named_modules():
            if any(name == p or name.startswith(p + ".") for p in prefixes) and hasattr(mod, "reset_parameters"):
                # seeded per module, so a layer gets the same new weights at every stage of the cascade
                torch.manual_seed(stable_seed(seed, name))
                mod.reset_parameters()
                if hasattr(mod, "reset_running_stats"):
                    mod.reset_running_stats()
    return model.eval()


def randomised_copy(model: torch.nn.Module, prefixes: list[str], seed: int) -> torch.nn.Module:
    """A deep copy of ``model`` whose modules under ``prefixes`` are re-initialised (seeded)."""
    return randomise_(copy.deepcopy(model), prefixes, seed)


@dataclass
class SanityResult:
    """Per-image similarities of one model/method: arrays (N,), stages in cascade order."""

    stages: list[str]
    spearman: dict[str, np.ndarray] = field(default_factory=dict)
    ssim: dict[str, np.ndarray] = field(default_factory=dict)
    floor_spearman: np.ndarray | None = None
    floor_ssim: np.ndarray | None = None

    @property
    def passed(self) -> bool | None:
        """True/False as in the module docstring; None when a similarity is undefined
        (e.g. constant maps: Grad-CAM of a 1x1 last feature map)."""
        last = self.stages[-1]
        vals = [
            mean_defined(self.spearman[last]),
            mean_defined(self.floor_spearman),
            mean_defined(self.ssim[last]),
            mean_defined(self.floor_ssim),
        ]
        if any(v is None for v in vals):
            return None
        return bool(vals[0] <= vals[1] and vals[2] <= vals[3])

    def summary(self) -> dict:
        """Means over images (None where no image has a defined value)."""
        return {
            "stages": self.stages,
            "spearman": {s: mean_defined(self.spearman[s]) for s in self.stages},
            "ssim": {s: mean_defined(self.ssim[s]) for s in self.stages},
            "floor_spearman": mean_defined(self.floor_spearman),
            "floor_ssim": mean_defined(self.floor_ssim),
            "n_images": int(len(self.floor_spearman)),
            "passed": self.passed,
        }


def mean_defined(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def cascading_randomisation(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    explain_fn: ExplainFn,
    *,
    seed: int = 0,
    batch_size: int = 16,
    image_ids: Sequence[str] | None = None,
) -> SanityResult:
    """Run the cascade on images (N, 3, H, W) in [0, 1] (N >= 2 for the floor).

    ``image_ids`` (N,): handed to ``explain_fn`` so that random methods draw each image's
    baselines/noise from (run seed, image id), as the stored maps
    (:mod:`robsal.metrics.explainer`); without them the draws follow the image's
    position, the same for the original and every randomised model, so the
    similarities stay comparisons at equal noise either way."""
    if images.shape[0] < 2:
        raise ValueError("the sanity check needs at least 2 images (for the random-pair floor)")
    original = compute_maps(explain_fn, model, images, targets, method, batch_size, image_ids)  # (N, H, W)
    shifted = np.roll(original, -1, axis=0)
    res = SanityResult(
        stages=[], floor_spearman=spearman_maps(original, shifted), floor_ssim=ssim_maps(original, shifted)
    )
    rnd = copy.deepcopy(model)  # randomised further at each stage; same weights as a fresh copy
    done: list[str] = []
    for label, prefixes in randomisation_stages(model):
        randomise_(rnd, [p for p in prefixes if p not in done], seed)
        done = list(prefixes)
        maps = compute_maps(explain_fn, rnd, images, targets, method, batch_size, image_ids)
        res.stages.append(label)
        res.spearman[label] = spearman_maps(original, maps)
        res.ssim[label] = ssim_maps(original, maps)
    del rnd
    return res
