"""Build, save and load classifiers (paper Appendix A: ResNet-18, new Kaiming-initialised head).

Every robsal model is a :class:`RobsalClassifier`: a :class:`Normalize` layer
(ImageNet mean/std by default) followed by a torchvision network whose last
layer has one output per class. It takes images in [0, 1] pixel space, so the
attacks and saliency methods never see normalised tensors.

Models robsal did not train (``torchvision:<name>`` / ``timm:<name>`` with the user's weights)
come in through :mod:`robsal.models.imported`; :func:`load` builds either kind.

A model directory holds ``model.safetensors`` (the ``state_dict`` only) and
``model.json`` (architecture, classes, normalisation, input size, eps, seed,
config, commit, metrics). Loading never unpickles anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from robsal.errors import CheckpointError, ConfigError
from robsal.io import atomic_path, save_safetensors
from robsal.models.imported import is_imported_arch, make_net, read_state_dict
from robsal.rundir.records import ModelRecord

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ResNet layer groups of Appendix D ("four blocks of convolutional layers and a final
# fully-connected layer"). The paper does not place the stem (conv1, bn1); we put it in
# group 1 with layer1 so that every parameter belongs to exactly one group.
RESNET_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("conv1", "bn1", "layer1"),
    2: ("layer2",),
    3: ("layer3",),
    4: ("layer4",),
    5: ("fc",),
}


class Normalize(nn.Module):
    """(x - mean) / std per channel; x in [0, 1], shape (N, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RobsalClassifier(nn.Module):
    """``normalize`` then ``net``: logits (N, K) from images (N, 3, H, W) in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], meta: dict[str, Any]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.meta = dict(meta)  # arch, classes, image_size, ... (written to model.json)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def head(self) -> nn.Module:
        """The classification layer that phase 1 trains (ResNet ``fc``)."""
        return _head_of(self.net)


def _head_of(net: nn.Module) -> nn.Module:
    if hasattr(net, "get_classifier"):  # timm names its head per family (fc, classifier, head.fc, ...)
        head = net.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(net, attr, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ConfigError(f"cannot find the classification layer of {type(net).__name__}")


def _replace_head(net: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer for a Kaiming-initialised one with ``num_classes`` outputs."""
    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(net, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.Linear):
            new = nn.Linear(mod.in_features, num_classes)
            setattr(net, attr, new)
            break
        if isinstance(mod, nn.Sequential):
            idx = max(i for i, m in enumerate(mod) if isinstance(m, nn.Linear))
            old = mod[idx]
            new = nn.Linear(old.in_features, num_classes)
            mod[idx] = new
            break
    else:
        raise ConfigError(f"cannot replace the classification layer of {type(net).__name__}")
    nn.init.kaiming_normal_(new.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(new.bias)


def torch_hub_checkpoint(arch: str) -> Path | None:
    """The file torchvision would download ImageNet weights to, if it is already there."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        return None
    hub = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return hub if hub.exists() else None


def load_pretrained(net: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict from a local ``.pth`` (``weights_only``) or ``.safetensors``.

    The classification layer is skipped (its shape differs); every other key must match.
    """
    path = Path(path)
    state = read_state_dict(path, what="pretrained weights",
                            hint="pass --pretrained PATH to a torchvision .pth checkpoint or a .safetensors file")
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in keep and not _is_head_key(net, k)]
    head_prefixes = tuple(name + "." for name, mod in net.named_children() if mod is _head_of(net))
    extra = [k for k in state if k not in own and not k.startswith(head_prefixes)]
    bad = missing + extra
    if bad:
        raise CheckpointError(
            f"{path} does not fit {type(net).__name__}: {len(bad)} keys missing, extra or mis-shaped "
            f"(first: {bad[0]}); is it the checkpoint of this architecture?"
        )
    net.load_state_dict(keep, strict=False)


def _is_head_key(net: nn.Module, key: str) -> bool:
    head = _head_of(net)
    return any(key.startswith(name + ".") for name, mod in net.named_children() if mod is head)


def build_model(
    arch: str = "resnet18",
    classes: Sequence[str] = ("mel", "nv", "bkl"),
    *,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    meta: dict[str, Any] | None = None,
) -> RobsalClassifier:
    """A torchvision ``arch`` with a new head of ``len(classes)`` outputs, normalising inside.

    ``pretrained=True`` loads ImageNet weights from ``pretrained_path`` or, failing that,
    from the file torchvision keeps in the torch hub cache. Nothing is ever downloaded.
    """
    try:
        net = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ConfigError(
            f"model.arch: unknown torchvision model {arch!r}; e.g. resnet18, resnet50, densenet121"
        ) from None
    if pretrained or pretrained_path is not None:
        path = Path(pretrained_path) if pretrained_path is not None else torch_hub_checkpoint(arch)
        if path is None:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
            target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
            raise CheckpointError(
                f"pretrained {arch} weights not found: put {os.path.basename(weights.url)} at {target} "
                "or pass --pretrained PATH (robsal never downloads)"
            )
        load_pretrained(net, path)
    _replace_head(net, len(classes))
    info = {
        "arch": arch,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "image_size": int(image_size),
        "pretrained": str(pretrained_path) if pretrained_path else bool(pretrained),
    }
    info.update(meta or {})
    return RobsalClassifier(net, mean, std, info)


def groups_of(model: RobsalClassifier | nn.Module) -> dict[int, list[str]]:
    """Parameter-name prefixes (relative to ``model``) of the Appendix D groups 1..5."""
    net = model.net if isinstance(model, RobsalClassifier) else model
    prefix = "net." if isinstance(model, RobsalClassifier) else ""
    names = {n for n, _ in net.named_children()}
    if not set(sum(RESNET_GROUPS.values(), ())) <= names:
        raise ConfigError(f"layer groups are defined for ResNets only, not {type(net).__name__}")
    return {g: [prefix + m for m in mods] for g, mods in RESNET_GROUPS.items()}


def group_parameters(model: nn.Module, groups: Sequence[int]) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter in the given groups."""
    prefixes = tuple(p + "." for g in groups for p in groups_of(model)[g])
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            yield name, p


def save(model: RobsalClassifier, model_dir: str | Path, **extra: Any) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (``meta`` updated with ``extra``)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / "model.safetensors", suffix=".safetensors") as tmp:
        save_safetensors(state, tmp)
    meta = dict(model.meta)
    meta.update(extra)
    model.meta = meta
    ModelRecord.from_dict(meta, model_dir / "model.json").save(model_dir / "model.json")
    return model_dir


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> RobsalClassifier:
    """Load a model directory written by :func:`save`; returns it in eval mode.

    The model takes images in [0, 1] of shape (N, 3, H, W) and returns logits.
    """
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "model.json", model_dir / "model.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise CheckpointError(
            f"{model_dir} is not a robsal model directory (needs model.json and model.safetensors)"
        )
    rec = ModelRecord.load(meta_path)  # one-line CheckpointError when damaged or hand-edited
    meta = rec.to_dict()
    mean = rec.mean if rec.mean is not None else IMAGENET_MEAN
    std = rec.std if rec.std is not None else IMAGENET_STD
    if is_imported_arch(rec.arch):  # torchvision:<name> / timm:<name> (robsal import-model)
        model = RobsalClassifier(make_net(rec.arch, len(rec.classes)), mean, std, meta)
    else:
        model = build_model(rec.arch, rec.classes, mean=mean, std=std,
                            image_size=rec.image_size if rec.image_size is not None else 224, meta=meta)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise CheckpointError(f"{weights_path} is corrupt or truncated ({exc}); re-train or restore it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"{weights_path} does not match {meta['arch']}: {first}") from None
    model.meta = meta
    return model.to(device).eval()
