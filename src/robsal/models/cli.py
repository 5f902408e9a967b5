"""``robsal import-model``: a classifier trained elsewhere becomes a robsal model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from robsal.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-model",
        help="turn your own torchvision/timm state dict into a robsal model directory",
        description="Check that WEIGHTS (a .safetensors file or a plain state dict saved with torch.save) "
        "fits --arch and that a forward pass runs, then write OUT/model.safetensors and OUT/model.json. "
        "`robsal explain --model OUT`, `robsal run --models NAME=OUT` and the other commands then use it. "
        "Or give SPEC, a YAML file with the keys arch, weights, classes, image_size, mean, std, "
        "gradcam_layer, eps (flags override it). Nothing is downloaded.",
    )
    p.add_argument("spec", nargs="?", default=None, help="optional YAML file with the same settings as the flags")
    p.add_argument("--arch", default=None, help="torchvision:<name> or timm:<name>, e.g. torchvision:resnet50")
    p.add_argument("--weights", default=None, help="state dict: .safetensors, or .pt/.pth saved with torch.save")
    p.add_argument("--classes", default=None, help="class names in the order of the model's outputs, comma-separated")
    p.add_argument("--image-size", type=int, default=None, help="side of the square input it was trained on (default 224)")
    p.add_argument("--mean", default=None, help="normalisation mean of [0, 1] images, 3 values (default ImageNet's)")
    p.add_argument("--std", default=None, help="normalisation std, 3 values (default ImageNet's)")
    p.add_argument("--gradcam-layer", default=None,
                   help="dotted module path for Grad-CAM, e.g. layer4 (default: the architecture family's)")
    p.add_argument("--eps", type=float, default=None,
                   help="L2 radius (paper units) it was adversarially trained at; 0 = a standard model (default)")
    p.add_argument("--out", required=True, help="model directory to write (must not hold a model yet)")
    p.set_defaults(func=_cmd_import)


_KEYS = ("arch", "weights", "classes", "image_size", "mean", "std", "gradcam_layer", "eps")


def _spec_file(path: str) -> dict:
    import yaml

    from robsal.io import check_regular_file

    try:
        data = yaml.safe_load(check_regular_file(path, "the model spec", 1 << 20).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with the keys {', '.join(_KEYS)}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(_KEYS)}")
    if data.get("weights") is not None:  # relative to the spec file
        data["weights"] = str((Path(path).parent / str(data["weights"])))
    return data


def _floats(text, flag: str) -> list[float] | None:  # noqa: ANN001  str or list from YAML
    if text is None:
        return None
    parts = text if isinstance(text, list) else str(text).split(",")
    try:
        return [float(v) for v in parts]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: give three numbers such as 0.485,0.456,0.406, got {text!r}") from None


def _cmd_import(args: argparse.Namespace) -> int:
    from robsal.models.imported import import_model

    spec = _spec_file(args.spec) if args.spec else {}
    spec.update({k: getattr(args, k) for k in _KEYS if getattr(args, k) is not None})  # flags override the file
    for key in ("arch", "weights", "classes"):
        if not spec.get(key):
            raise ConfigError(f"import-model needs --{key} (or {key}: in the spec file)")
    classes = spec["classes"]
    classes = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    try:
        size = int(spec.get("image_size") or 224)
        eps = float(spec.get("eps") or 0.0)
    except (TypeError, ValueError):
        raise ConfigError("--image-size must be an integer and --eps a number") from None
    out = import_model(
        str(spec["arch"]), spec["weights"], classes, args.out, image_size=size,
        mean=_floats(spec.get("mean"), "--mean"), std=_floats(spec.get("std"), "--std"),
        gradcam_layer=spec.get("gradcam_layer"), eps=eps,
    )
    from robsal.rundir import ModelRecord

    rec = ModelRecord.load(out / "model.json")
    print(f"imported {rec.arch} ({len(rec.classes)} classes: {', '.join(rec.classes)}; {rec.image_size} px; "
          f"Grad-CAM layer {rec.gradcam_layer or 'none'}) into {out}")
    return 0
