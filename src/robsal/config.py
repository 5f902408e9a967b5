"""Typed configuration for every stage, YAML presets and command-line overrides.

A config is a tree of frozen-free dataclasses. It is built from a preset
(``tiny``, ``quick``, ``paper``: ``src/robsal/configs/*.yaml``) or a user YAML
file, then ``--set section.key=value`` overrides are applied, then the whole tree
is validated. Unknown keys, wrong types and out-of-range values raise
:class:`~robsal.errors.ConfigError` naming the key.

Units
-----
Adversarial ``eps`` values are given in *paper units*: the L2 radius for a
224x224x3 input in [0, 1] pixel space (the paper: eps=4 "for 50,000 image
pixels", Section 2, which adds "scale eps proportionally to the desired input
size"). How a paper-unit eps becomes the effective radius at another input size
is an explicit choice, ``adversary.eps_scaling``:

``side`` (default)
    keep the per-value RMS perturbation equal: the L2 norm of a perturbation of
    equal per-pixel size grows with the square root of the number of values, i.e.
    linearly with the side length::

        eps_l2 = eps * image_size / eps_reference_size       (reference 224 px)

    An adversary of the same per-pixel strength as the paper's at every size
    (eps 4 -> 1.14 at 64 px, 2.29 at 128 px).
``pixels``
    the literal reading of "proportionally to the input size": proportional to the
    number of pixels::

        eps_l2 = eps * (image_size / eps_reference_size) ** 2

    (eps 4 -> 0.33 at 64 px): a per-pixel perturbation 224/64 = 3.5x smaller than
    the paper's at 64 px, i.e. a much weaker adversary at small sizes.

Both agree at 224 px. Set ``adversary.eps_reference_size: null`` to give raw L2
radii instead (no scaling).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from robsal.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "configs"


# --------------------------------------------------------------------------- sections


@dataclass
class SynthConfig:
    """Built-in synthetic dermoscopy generator (``robsal data synth``)."""

    n: int = 600  # number of images
    size: int = 128  # height of the 4:3 images written to disk (width = 4/3 x size), px
    seed: int = 0
    multi_view_rate: float = 0.25  # share of lesions photographed more than once
    hair_rate: float = 0.35
    ruler_rate: float = 0.15
    vignette_rate: float = 0.25
    bubble_rate: float = 0.15
    # P(ruler | melanoma); when set, rulers appear *only* with melanoma at this rate
    # (a deliberate shortcut for testing whether saliency exposes it). None = off.
    spurious_ruler_mel: float | None = None
    difficulty: float = 0.5  # 0 = textbook lesions, 1 = heavily overlapping classes


@dataclass
class DataConfig:
    """Dataset source, subset, splits and preprocessing (paper Section 2, Appendix A)."""

    # synthetic | ham10000 | folder | medmnist | medmnist:<set> | auto (auto: MedMNIST for a .npz
    # file, HAM10000 layout if a metadata CSV is there, else folder)
    source: str = "synthetic"
    root: str | None = None  # dataset folder (or MedMNIST .npz file); None with source=synthetic -> generated in RUN/data
    classes: list[str] = field(default_factory=lambda: ["mel", "nv", "bkl"])
    image_size: int = 64  # side of the square model input, px (paper: 224)
    train_per_class: int | None = 800  # None = all available (unbalanced)
    test_per_class: int | None = 299
    val_per_class: int = 50  # taken from test (Appendix D: 150 = 3 x 50); 0 = no val split
    n_folds: int = 5
    split_by: Literal["lesion", "image"] = "lesion"  # the paper split by image; see data.splits
    seed: int = 0
    splits: str | None = None  # reuse an existing splits.csv
    center_crop: bool = True  # crop the central square (450x450 of 600x450) before resizing
    cache_dir: str | None = None  # default: $ROBSAL_CACHE or ~/.cache/robsal
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class AugmentConfig:
    """Training augmentation (Appendix A), applied per sample, batched, on the device."""

    enabled: bool = True
    hflip: bool = True
    vflip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    affine_degrees: float = 10.0  # the paper's "random affine transformation of 10 deg"
    rotation_degrees: float = 50.0


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # any torchvision classification model name
    pretrained: bool = False  # ImageNet weights from a local file, never downloaded
    pretrained_path: str | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class PhaseConfig:
    """One training phase (Appendix A: phase 1 = last layer, phase 2 = whole network)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay_epochs: list[int] = field(default_factory=list)  # epochs after which lr *= lr_decay
    lr_decay: float = 0.1
    trainable: Literal["head", "all"] = "all"


@dataclass
class TrainConfig:
    phase1: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(epochs=10, batch_size=32, lr=1e-3, trainable="head")
    )
    phase2: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(
            epochs=25, batch_size=16, lr=3e-4, lr_decay_epochs=[15], trainable="all"
        )
    )
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    num_workers: int = 0
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA only; ignored on CPU
    compile: bool = False
    eval_batch_size: int = 128


@dataclass
class AdversaryConfig:
    """PGD used for adversarial training (Section 2, Appendix A)."""

    norm: Literal["l2", "linf"] = "l2"
    steps: int = 7
    step_size_factor: float = 0.2  # step size = eps * factor (paper: eps / 5)
    random_start: bool = True
    eps_reference_size: int | None = 224  # eps values are in paper units at this size
    # how paper units scale with the input size (module docstring): equal per-pixel RMS
    # ("side", eps ~ side length) or the literal "proportional to the pixel count" ("pixels")
    eps_scaling: Literal["side", "pixels"] = "side"


@dataclass
class ModelSpec:
    """One model to train: eps = 0 is standard training."""

    name: str = "standard"
    eps: float = 0.0  # paper units, see module docstring
    seed: int | None = None  # None = the run's seed
    # a model directory to measure instead of training one (robsal import-model; robsal.training.adopt)
    path: str | None = None


@dataclass
class TuneConfig:
    """5-fold CV grid search with standard training (Appendix A)."""

    enabled: bool = False
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-4, 1e-4])
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    folds: int = 5


@dataclass
class RobustnessConfig:
    """Evaluation under PGD (more steps than training)."""

    eps: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # paper units
    steps: int = 20
    max_images: int | None = None  # evaluate robust accuracy on at most this many test images
    autoattack: bool = False


@dataclass
class SaliencyConfig:
    methods: list[str] = field(
        default_factory=lambda: [
            "gradient",
            "integrated_gradients_uniform",
            "integrated_gradients_gaussian",
            "smoothgrad",
            "occlusion",
            "gradcam",
        ]
    )
    n_per_class: int = 10  # test images explained per class (correct for every model)
    target: Literal["label", "prediction"] = "label"
    ig_steps: int = 50
    ig_baselines: int = 1  # random IG baselines averaged per image (the paper: 1)
    smoothgrad_samples: int = 25
    smoothgrad_noise: float = 0.15  # fraction of the input range
    reduction: Literal["paper", "captum"] = "paper"
    batch_size: int = 16
    gradcam_layer: str | None = None  # dotted module path; None = net.layer4 (ResNet) or the last Conv2d
    figure_images: int = 12  # images shown in the saliency figures (all selected ones are saved)


@dataclass
class MetricsConfig:
    n_bootstrap: int = 2000
    alpha: float = 0.05
    # The competence gate (robsal.metrics.gate): models are compared only when each recalls
    # every class of the test split at least this well ...
    min_recall: float = 0.5
    # ... and every class has at least this many explained images (correct for every model);
    # None = saliency.n_per_class (every class gets the images the run asked for)
    min_explained_per_class: int | None = None
    deletion_steps: int = 16
    faithfulness: bool = True
    sanity: bool = True
    sanity_images: int = 8
    stability: bool = True
    deletion_fill: Literal["blur", "mean"] = "blur"  # what replaces deleted pixels
    sensitivity: bool = True  # max-sensitivity on sanity_images images
    sensitivity_radius: float = 0.02  # L-inf noise radius, [0, 1] pixel units
    sensitivity_samples: int = 4
    batch_size: int = 64  # images per forward pass in the faithfulness curves


@dataclass
class ControlConfig:
    """The positive control (``robsal control``, :mod:`robsal.experiments.control`,
    docs/positive_control.md): one synthetic artifact planted with one class at each rate.

    Used only by ``robsal control``; the main job ignores this section.
    """

    artifact: Literal["hair", "ruler", "vignette", "bubble"] = "ruler"
    planted_class: str = "mel"  # the artifact appears only on this class's images
    rates: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])  # P(artifact | planted class); 0 = negative control
    methods: list[str] | None = None  # saliency methods to test; None = saliency.methods
    explain_per_class: int = 40  # test images per class whose maps are computed (reliance uses every test image)
    examples: int = 3  # counterfactual pairs shown in the report


@dataclass
class Config:
    name: str = "custom"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # CPU threads of torch; None = the CPUs this process may use (robsal.threads)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    models: list[ModelSpec] = field(
        default_factory=lambda: [ModelSpec("standard", 0.0), ModelSpec("robust_eps4", 4.0)]
    )
    tune: TuneConfig = field(default_factory=TuneConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    # ---------------------------------------------------------------- helpers
    def eps_scale(self) -> float:
        """Factor from paper-unit eps to the effective L2 radius at this input size (1 for raw radii)."""
        ref = self.adversary.eps_reference_size
        if ref is None:
            return 1.0
        ratio = self.data.image_size / ref
        return ratio if self.adversary.eps_scaling == "side" else ratio**2

    def eps_l2(self, eps: float) -> float:
        """Effective L2 radius at this config's input size for an eps in paper units
        (``adversary.eps_scaling``; module docstring)."""
        return float(eps) * self.eps_scale()

    def min_explained(self) -> int:
        """Explained images every class needs for a comparison (``metrics.min_explained_per_class``)."""
        k = self.metrics.min_explained_per_class
        return self.saliency.n_per_class if k is None else int(k)

    def model_spec(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.models)
        raise ConfigError(f"unknown model {name!r}; the config lists: {known}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = args
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):  # also NaN and inf
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-3" (no dot) as a string
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _show_key(key: Any) -> str:
    """A key as typed when it is a plain name, else quoted (keeps error messages on one line)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{_show_key(unknown[0])}; valid keys{' in ' + prefix if prefix else ''}: "
            + ", ".join(sorted(names))
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


MAX_IMAGE_SIZE = 1024  # model input side, px (the paper: 224)
MAX_SYNTH_SIZE = 2048  # rendered image height, px
MAX_SYNTH_IMAGES = 1_000_000
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; /dev/zero or a stray dataset file is not one


def _read_yaml(path: Path) -> dict[str, Any]:
    from robsal.errors import DataError
    from robsal.io import check_regular_file

    try:
        check_regular_file(path, "config", MAX_CONFIG_BYTES)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML) into (["a","b","c"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
        node = nxt
    node[path[-1]] = value


def load_config(
    config: str | Path | None = "quick", overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build a validated :class:`Config` from a preset name or YAML path plus overrides.

    ``config`` is a preset name (``tiny``, ``quick``, ``paper``), a path to a YAML
    file, or None for the defaults. A YAML file may say ``base: quick`` to start
    from a preset.
    """
    data: dict[str, Any] = {}
    if config is not None:
        data = _resolve_yaml(config, seen=())
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(data, path, value)
    return from_dict(data)


def _resolve_yaml(config: str | Path, seen: tuple[str, ...]) -> dict[str, Any]:
    text = str(config)
    path = Path(text)
    if not path.suffix and (PRESETS_DIR / f"{text}.yaml").exists():
        path = PRESETS_DIR / f"{text}.yaml"
    elif not path.exists():
        raise ConfigError(
            f"config {text!r} is neither a file nor a preset; presets: {', '.join(preset_names())}"
        )
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        base_path = str(base)
        if not (PRESETS_DIR / f"{base_path}.yaml").exists() and not Path(base_path).is_absolute():
            base_path = str(path.parent / base_path)
        data = _deep_merge(_resolve_yaml(base_path, seen + (key,)), data)
    return data


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain mapping (e.g. a run's ``config.yaml``) into a :class:`Config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _from_dict(Config, data)
    validate(cfg)
    return cfg


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run directory was made with (``RUN/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a robsal run directory: {path.name} is missing")
    return from_dict(_read_yaml(path))


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express; the first failing one is a one-line ConfigError."""

    _check_numbers(cfg.to_dict())
    seeds = {"seed": cfg.seed, "data.seed": cfg.data.seed, "data.synth.seed": cfg.data.synth.seed}
    seeds.update({f"models.{m.name}.seed": m.seed for m in cfg.models if m.seed is not None})
    for key, v in seeds.items():
        _need(0 <= v < 2**63, key, f"must lie in [0, 2**63), got {v}")
    _validate_data(cfg.data)
    _validate_training(cfg)
    _validate_evaluation(cfg)


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _validate_data(d: DataConfig) -> None:
    sources = ("synthetic", "ham10000", "folder", "medmnist", "auto")
    _need(d.source in sources or d.source.startswith("medmnist:"), "data.source",
         f"{d.source!r} is not one of {', '.join(repr(v) for v in sources)} or 'medmnist:<set>'")
    _need(d.image_size >= 16, "data.image_size", f"must be >= 16 px, got {d.image_size}")
    _need(d.image_size <= MAX_IMAGE_SIZE, "data.image_size",
         f"must be <= {MAX_IMAGE_SIZE} px (the cache holds N x 3 x size^2 bytes), got {d.image_size}")
    _need(len(d.classes) >= 2, "data.classes", "needs at least two classes")
    _need(len(set(d.classes)) == len(d.classes), "data.classes", "lists a class twice")
    for key in ("train_per_class", "test_per_class"):
        v = getattr(d, key)
        _need(v is None or v >= 1, f"data.{key}", f"must be >= 1 or null, got {v}")
    _need(d.val_per_class >= 0, "data.val_per_class", "must be >= 0")
    _need(d.n_folds >= 2, "data.n_folds", f"must be >= 2, got {d.n_folds}")
    s = d.synth
    _need(s.n >= 3, "data.synth.n", "must be >= 3 (one image per class)")
    _need(s.size >= 16, "data.synth.size", "must be >= 16 px")
    _need(s.size <= MAX_SYNTH_SIZE, "data.synth.size", f"must be <= {MAX_SYNTH_SIZE} px, got {s.size}")
    _need(s.n <= MAX_SYNTH_IMAGES, "data.synth.n", f"must be <= {MAX_SYNTH_IMAGES} images, got {s.n}")
    for key in ("multi_view_rate", "hair_rate", "ruler_rate", "vignette_rate", "bubble_rate", "difficulty"):
        v = getattr(s, key)
        _need(0.0 <= v <= 1.0, f"data.synth.{key}", f"must lie in [0, 1], got {v}")
    _need(
        s.spurious_ruler_mel is None or 0.0 <= s.spurious_ruler_mel <= 1.0,
        "data.synth.spurious_ruler_mel",
        "must lie in [0, 1] or be null",
    )


def _validate_training(cfg: Config) -> None:
    """augment, model, train, adversary, models and the config's name."""
    a = cfg.augment
    for key in ("brightness", "contrast", "saturation"):
        _need(0.0 <= getattr(a, key) < 1.0, f"augment.{key}", "must lie in [0, 1)")
    _need(len(cfg.model.mean) == 3 and len(cfg.model.std) == 3, "model.mean/std", "need 3 values")
    _need(all(v > 0 for v in cfg.model.std), "model.std", "must be positive")
    for ph in ("phase1", "phase2"):
        p: PhaseConfig = getattr(cfg.train, ph)
        _need(p.epochs >= 0, f"train.{ph}.epochs", "must be >= 0")
        _need(p.batch_size >= 1, f"train.{ph}.batch_size", "must be >= 1")
        _need(p.lr > 0, f"train.{ph}.lr", "must be > 0")
        _need(0 < p.lr_decay <= 1, f"train.{ph}.lr_decay", "must lie in (0, 1]")
    _need(len(cfg.train.betas) == 2, "train.betas", "needs two values")
    _need(all(0 <= b < 1 for b in cfg.train.betas), "train.betas", "must lie in [0, 1)")
    _need(cfg.train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _need(cfg.train.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
    _need(cfg.train.num_workers >= 0, "train.num_workers", "must be >= 0")
    adv = cfg.adversary
    _need(adv.steps >= 1, "adversary.steps", f"must be >= 1, got {adv.steps}")
    _need(adv.step_size_factor > 0, "adversary.step_size_factor", "must be > 0")
    _need(adv.eps_reference_size is None or adv.eps_reference_size >= 1, "adversary.eps_reference_size",
         "must be >= 1 px or null")
    _need(len(cfg.models) >= 1, "models", "lists no model to train")
    names = [m.name for m in cfg.models]
    _need(len(set(names)) == len(names), "models", "two models share a name")
    # names become folder names (runs/<name>, RUN/models/<name>): plain names only, never a path
    _need(_plain_name(cfg.name), "name",
         f"{cfg.name!r} must be a plain name (letters, digits, '_', '-', '.'; not a path); "
         "choose the output folder with --out")
    for m in cfg.models:
        _need(m.eps >= 0, f"models.{m.name}.eps", f"must be >= 0, got {m.eps}")
        _need(m.path is None or m.eps == 0, f"models.{m.name}.eps",
              "an imported model's eps is the one in its model.json (robsal import-model --eps); leave eps out")
        _need(_plain_name(m.name), "models.name", f"{m.name!r} may contain only letters, digits, '_', '-' and '.'")


def _validate_evaluation(cfg: Config) -> None:
    """robustness, threads, saliency, metrics, tune and control."""
    _need(all(e >= 0 for e in cfg.robustness.eps), "robustness.eps", "must be >= 0")
    _need(cfg.robustness.steps >= 1, "robustness.steps", "must be >= 1")
    _need(cfg.robustness.max_images is None or cfg.robustness.max_images >= 1, "robustness.max_images",
         "must be >= 1 or null")
    _need(cfg.threads is None or cfg.threads >= 1, "threads", "must be >= 1 or null (the CPUs this process may use)")
    _need(cfg.saliency.n_per_class >= 1, "saliency.n_per_class", "must be >= 1")
    _need(cfg.saliency.ig_steps >= 1, "saliency.ig_steps", "must be >= 1")
    _need(cfg.saliency.ig_baselines >= 1, "saliency.ig_baselines", "must be >= 1")
    _need(cfg.saliency.smoothgrad_samples >= 1, "saliency.smoothgrad_samples", "must be >= 1")
    _need(cfg.saliency.smoothgrad_noise >= 0, "saliency.smoothgrad_noise", "must be >= 0")
    _need(cfg.saliency.batch_size >= 1, "saliency.batch_size", "must be >= 1")
    _need(cfg.saliency.figure_images >= 0, "saliency.figure_images", "must be >= 0")
    _need(cfg.metrics.n_bootstrap >= 100, "metrics.n_bootstrap", "must be >= 100")
    _need(0.0 <= cfg.metrics.min_recall <= 1.0, "metrics.min_recall", f"must lie in [0, 1], got {cfg.metrics.min_recall}")
    k_min = cfg.metrics.min_explained_per_class
    _need(k_min is None or k_min >= 1, "metrics.min_explained_per_class", "must be >= 1 or null")
    _need(
        k_min is None or k_min <= cfg.saliency.n_per_class,
        "metrics.min_explained_per_class",
        f"asks for {cfg.metrics.min_explained_per_class} explained images per class but saliency.n_per_class "
        f"selects at most {cfg.saliency.n_per_class}; lower it or raise saliency.n_per_class",
    )
    _need(0 < cfg.metrics.alpha < 1, "metrics.alpha", "must lie in (0, 1)")
    _need(cfg.metrics.deletion_steps >= 2, "metrics.deletion_steps", "must be >= 2")
    _need(cfg.metrics.sanity_images >= 2, "metrics.sanity_images", "must be >= 2 (the random-pair floor)")
    _need(cfg.metrics.sensitivity_radius > 0, "metrics.sensitivity_radius", "must be > 0")
    _need(cfg.metrics.sensitivity_samples >= 1, "metrics.sensitivity_samples", "must be >= 1")
    _need(cfg.metrics.batch_size >= 1, "metrics.batch_size", "must be >= 1")
    _need(cfg.tune.folds >= 2, "tune.folds", "must be >= 2")
    c = cfg.control
    _need(len(c.rates) >= 1 and len(set(c.rates)) == len(c.rates), "control.rates",
         f"needs different rates (e.g. [0, 0.5, 0.9]), got {c.rates}")
    _need(all(0.0 <= r <= 1.0 for r in c.rates), "control.rates", f"must lie in [0, 1], got {c.rates}")
    _need(c.methods is None or len(c.methods) >= 1, "control.methods", "lists no method (null = saliency.methods)")
    _need(c.explain_per_class >= 2, "control.explain_per_class", f"must be >= 2, got {c.explain_per_class}")
    _need(c.examples >= 0, "control.examples", f"must be >= 0, got {c.examples}")
    _need(all(lr > 0 for lr in cfg.tune.lrs), "tune.lrs", "must all be > 0")
    _need(all(b >= 1 for b in cfg.tune.batch_sizes), "tune.batch_sizes", "must all be >= 1")


def _plain_name(name: str) -> bool:
    """A name usable as one folder name: letters, digits, '_', '-', '.', not '.' or '..'."""
    return bool(name) and all(c.isalnum() or c in "_-." for c in name) and name not in (".", "..")


def _check_numbers(obj: Any, key: str = "") -> None:
    """Every float is finite and every integer fits in 64 bits (NaN, inf and 10**30 are typos)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{key}: must be a finite number, got {obj}")
    if isinstance(obj, int) and not -(2**63) <= obj < 2**63:
        raise ConfigError(f"{key}: {obj} is too large")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_numbers(v, f"{key}[{i}]")
