"""Classifiers robsal did not train: a torchvision or timm architecture plus the user's weights.

``robsal import-model`` (:func:`import_model`) turns a state dict saved by the user's own
training code into a robsal model directory (``model.safetensors`` + ``model.json``, the
layout of :func:`robsal.models.save`), after checking that every weight fits the
architecture and that a forward pass runs. ``explain``, ``evaluate``, ``control``,
``report`` and ``robsal run --models NAME=DIR`` then use it like a model robsal trained.

An imported model's ``arch`` names its library: ``torchvision:<name>`` (built with
``torchvision.models.get_model(name, weights=None, num_classes=K)``, as the user's code
would) or ``timm:<name>`` (``timm.create_model(name, pretrained=False, num_classes=K)``;
timm is the optional extra ``robsal[timm]``). A plain name (``resnet18``) stays what robsal
itself trains: torchvision with robsal's re-initialised head (:func:`robsal.models.build_model`).
Nothing is downloaded: the weights come only from the given file.

Grad-CAM needs a convolutional feature map. ``model.json`` stores the layer as
``gradcam_layer`` (a dotted path from the robsal model, e.g. ``net.stages.3``): the one
given, else the first of :func:`gradcam_candidates` with such a map (ResNet ``layer4`` as in
Appendix B.4 of the paper; torchvision's ``features`` trunk; timm's last feature stage from
its ``feature_info``; else the last ``Conv2d``), checked to give an (N, C, h, w) output.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robsal.errors import CheckpointError, ConfigError

LIBRARIES = ("torchvision", "timm")
TIMM_HINT = 'timm models need the timm package: pip install "robsal[timm]"'
# Containers that training scripts wrap a state dict in ({"state_dict": ...}, Lightning, ...).
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")
# Prefixes that wrappers add to every key (DataParallel/DDP "module.", torch.compile "_orig_mod.").
_PREFIXES = ("module.", "_orig_mod.")


def split_arch(arch: str) -> tuple[str | None, str]:
    """``"timm:convnext_atto"`` -> ``("timm", "convnext_atto")``; a plain name -> ``(None, name)``."""
    if ":" not in arch:
        return None, arch
    library, name = arch.split(":", 1)
    if library not in LIBRARIES or not name:
        raise ConfigError(
            f"architecture {arch!r}: give torchvision:<name> or timm:<name>, e.g. torchvision:resnet50 "
            "or timm:convnext_tiny"
        )
    return library, name


def is_imported_arch(arch: str) -> bool:
    return split_arch(arch)[0] is not None


def make_net(arch: str, num_classes: int) -> nn.Module:
    """The bare network of ``torchvision:<name>`` / ``timm:<name>`` with ``num_classes`` outputs.

    Built with random weights (never downloaded) inside :func:`torch.random.fork_rng`, so
    building one does not move the caller's random stream.
    """
    library, name = split_arch(arch)
    if library is None:
        raise ConfigError(f"architecture {arch!r}: prefix it with its library, torchvision:{arch} or timm:{arch}")
    with torch.random.fork_rng(devices=[]):
        if library == "torchvision":
            import torchvision

            try:
                return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            except ValueError:
                raise ConfigError(
                    f"unknown torchvision model {name!r} in {arch!r}; see torchvision.models.list_models()"
                ) from None
        timm = _timm()
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r} in {arch!r}; see timm.list_models()")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _timm():  # noqa: ANN202
    try:
        import timm
    except ModuleNotFoundError:
        raise ConfigError(TIMM_HINT) from None
    return timm


# --------------------------------------------------------------------------- the weights file


STATE_DICT_HINT = "save model.state_dict() (not the model object) with torch.save, or use .safetensors"


def read_state_dict(path: str | Path, *, what: str = "weights file", hint: str = STATE_DICT_HINT) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a plain state dict saved with ``torch.save``.

    ``torch.load`` runs with ``weights_only=True``: a pickled model object is refused, never
    executed. One wrapper level (``{"state_dict": ...}``, ``{"model": ...}``) and the key
    prefixes ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) are removed.
    Every failure is one :class:`CheckpointError` naming the file, ending with ``hint``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {hint}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as exc:  # safetensors raises its own types on corrupt or foreign files
            raise CheckpointError(
                f"refusing to load {path}: not a valid safetensors file ({str(exc).splitlines()[0]}); {hint}"
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle refused, or not a torch file
            raise CheckpointError(
                f"refusing to load {path}: not a plain tensor state dict ({type(exc).__name__}); {hint}"
            ) from None
    if isinstance(state, dict):
        for key in _WRAPPERS:
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; {hint}")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_into(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path, arch: str, num_classes: int) -> None:
    """Load ``state`` into ``net`` strictly; a one-line error names the first key that does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shaped:
        head = _head_key(net)
        if shaped and head is not None and shaped[0] == head:
            raise CheckpointError(
                f"{path}: the classification layer {head} has {tuple(state[head].shape)[0]} outputs but "
                f"{num_classes} classes were given; give the model's classes in its output order"
            )
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)) if v]
        raise CheckpointError(f"{path} does not fit {arch}: " + ", ".join(parts) + "; is it a state dict of this architecture?")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _head_key(net: nn.Module) -> str | None:
    """The state-dict key of the classification layer's weight: the last Linear of the head."""
    from robsal.models.build import _head_of

    try:
        head = _head_of(net)  # timm get_classifier(), else fc / classifier / head / heads
    except ConfigError:
        head = net
    linears = [name for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    prefix = next(name for name, m in net.named_modules() if m is head)
    return ".".join(p for p in (prefix, linears[-1], "weight") if p)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- Grad-CAM layer


def gradcam_candidates(net: nn.Module, arch: str) -> list[str]:
    """Dotted paths (within ``net``), best first, of the feature map Grad-CAM uses for this family.

    timm: the last entry of its ``feature_info`` (``layer4``, ``stages.3``, ``blocks.6``, ...);
    ResNet-like ``layer4`` (paper Appendix B.4); torchvision trunks (``features``: DenseNet,
    VGG, MobileNet, EfficientNet, ConvNeXt; ``trunk_output``: RegNet); then the last
    ``Conv2d``. None for a network with attention blocks (ViT, Swin): their last convolution
    is the patch embedding, whose map says nothing about the decision.
    """
    names = dict(net.named_modules())
    if any("Attention" in type(m).__name__ for m in net.modules()):
        return []
    found: list[str] = []
    info = getattr(net, "feature_info", None)
    if info is not None and split_arch(arch)[0] == "timm":
        with contextlib.suppress(Exception):
            found.append(str(info[-1]["module"]))
    found += ["layer4", "features", "trunk_output"]
    found += [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)][-1:]
    return list(dict.fromkeys(c for c in found if c in names))


def feature_map_shape(model: nn.Module, layer: str, image_size: int) -> tuple[int, ...] | None:
    """Output shape of ``layer`` (a dotted path of ``model``) for one zero image, None if it is not a tensor."""
    seen: list[Any] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        handle.remove()
    return tuple(seen[-1].shape) if seen and torch.is_tensor(seen[-1]) else None


# --------------------------------------------------------------------------- the command


def import_model(
    arch: str,
    weights: str | Path,
    classes: Sequence[str],
    out: str | Path,
    *,
    image_size: int = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    gradcam_layer: str | None = None,
    eps: float = 0.0,
    name: str | None = None,
) -> Path:
    """Write ``out/model.safetensors`` + ``out/model.json`` for ``arch`` with the user's ``weights``.

    ``classes`` in the order of the model's outputs; ``image_size`` the side of the square
    input it was trained on; ``mean``/``std`` the normalisation its training applied to
    [0, 1] images (default ImageNet's); robsal models take [0, 1] images and normalise inside.
    ``eps``: the L2 radius (paper units) the model was adversarially trained at, 0 for a
    standard model (it decides the model's role in robust-vs-standard verdicts).
    ``gradcam_layer``: a dotted path within the network (``layer4``) or the robsal model
    (``net.layer4``); default: the first of :func:`gradcam_candidates` with a 4D output.
    """
    from robsal.models.build import IMAGENET_MEAN, IMAGENET_STD, RobsalClassifier, save

    out = Path(out)
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"--classes: give two or more distinct class names in output order, got {classes}")
    if image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 pixels, got {image_size}")
    if eps < 0:
        raise ConfigError(f"--eps must be >= 0, got {eps}")
    mean = list(IMAGENET_MEAN if mean is None else mean)
    std = list(IMAGENET_STD if std is None else std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"--mean and --std need three values each, std > 0; got mean {mean}, std {std}")
    if (out / "model.json").exists() or (out / "model.safetensors").exists():
        raise CheckpointError(f"{out} already holds a model; choose another --out or delete it first")
    net = make_net(arch, len(classes))
    state = read_state_dict(weights)
    load_into(net, state, weights, arch, len(classes))
    meta: dict[str, Any] = {
        "arch": arch, "classes": classes, "mean": mean, "std": std, "image_size": int(image_size),
        "pretrained": False, "name": name or out.resolve().name, "eps": float(eps),
    }
    model = RobsalClassifier(net, mean, std, meta).eval()
    with torch.no_grad():
        try:
            logits = model(torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)))
        except RuntimeError as exc:
            raise CheckpointError(
                f"{arch} does not run on {image_size}x{image_size} images ({str(exc).splitlines()[0]}); "
                "give the --image-size it was trained on"
            ) from None
    if tuple(logits.shape) != (2, len(classes)) or not torch.isfinite(logits).all():
        raise CheckpointError(
            f"{arch} with {weights} gives outputs of shape {tuple(logits.shape)} (finite: "
            f"{bool(torch.isfinite(logits).all())}), not ({len(classes)},) finite logits per image"
        )
    meta["gradcam_layer"] = _checked_gradcam_layer(model, arch, gradcam_layer, image_size)
    meta["imported"] = {"weights": str(Path(weights).resolve()), "sha256": sha256(weights), "arch": arch}
    model.meta = meta
    return save(model, out)


def _checked_gradcam_layer(model: nn.Module, arch: str, layer: str | None, image_size: int) -> str | None:
    """``net.<layer>`` checked to give an (N, C, h, w) map; without ``layer`` the first such candidate."""
    if layer is None:
        for cand in gradcam_candidates(model.net, arch):
            shape = feature_map_shape(model, f"net.{cand}", image_size)
            if shape is not None and len(shape) == 4:
                return f"net.{cand}"
        return None
    if not layer.startswith("net."):
        layer = f"net.{layer}"
    try:
        model.get_submodule(layer)
    except AttributeError:
        raise ConfigError(
            f"--gradcam-layer {layer[4:]!r} is not a module of {arch}; give a dotted path such as layer4 or stages.3"
        ) from None
    shape = feature_map_shape(model, layer, image_size)
    if shape is None or len(shape) != 4:
        raise ConfigError(
            f"--gradcam-layer {layer[4:]!r} of {arch} gives {shape}, not an (N, C, h, w) feature map; "
            "choose a convolutional layer"
        )
    return layer
