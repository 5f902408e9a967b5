"""``robsal run`` (the main job), ``robsal sweep`` (eps x seed grids), ``robsal finetune``
(layer-group fine-tuning of a robust model) and ``robsal control`` (the positive control)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from robsal.cli import add_config_args, config_from_args
from robsal.errors import ConfigError, UserError


def register(sub: argparse._SubParsersAction) -> None:
    _register_run(sub)
    _register_sweep(sub)
    _register_finetune(sub)
    _register_control(sub)


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole study (data, training, saliency, metrics, report)",
        description="Run the whole study on the built-in synthetic data (default) or --data DIR, "
        "resumably: re-running the same command skips finished stages.",
    )
    add_config_args(p, default="quick")
    p.add_argument("--data", default=None, help="dataset folder (HAM10000 layout or <class>/ folders)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--force", default="", help="comma-separated stages to redo (data,tune,train,explain,evaluate,report)")
    p.add_argument(
        "--models", default=None, metavar="LIST",
        help="comma-separated models to compare: names of the config's models, and NAME=DIR for a model "
        "directory made by `robsal import-model` (measured, not trained), e.g. standard,robust_eps4,mine=my_model",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)


def _register_sweep(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sweep",
        help="train, explain and evaluate a grid of eps x seed models; tables and plots vs eps",
        description="Train one model per cell of an eps x seed grid on the same data and splits "
        "(eps = 0: standard training), explain and evaluate all of them on the same test images, "
        "and aggregate: accuracy and every saliency metric vs eps (SWEEP/sweep/table.csv|json), "
        "seed stability per eps, the per-image optimal eps, and figures. Resumable: re-running "
        "skips finished cells; a failed cell is retried once and the others go on.",
    )
    add_config_args(s, default="quick")
    s.add_argument("--grid", required=True, help='e.g. "eps=0,1,2,4,7;seed=0,1,2" (eps in paper units)')
    s.add_argument("--out", default=None, help="sweep directory (default: runs/<config name>_sweep)")
    s.add_argument("--data", default=None, help="dataset folder (HAM10000 layout or <class>/ folders)")
    s.add_argument("--images", choices=("correct", "all"), default="correct",
                   help="explain test images every cell classifies correctly (paper) or any (default: correct)")
    s.add_argument("--retries", type=int, default=1, help="extra attempts of a failed cell (default: 1)")
    s.add_argument("--optimum-metric", default="relevance_mass",
                   help="per-image metric that picks each image's optimal eps (default: relevance_mass)")
    s.add_argument("--optimum-method", default="gradient", help="saliency method for the optimum (default: gradient)")
    s.add_argument("--optimum-direction", choices=("max", "min"), default=None,
                   help="whether higher or lower is better (default: known per metric)")
    s.add_argument("--band", default="3,5", help="eps band whose share of optima is reported (default: 3,5)")
    s.add_argument("--figure-method", default="gradient", help="method of the Figure 10/11 grids (default: gradient)")
    s.add_argument("--no-figures", action="store_true", help="write the tables only")
    s.add_argument("--ray-address", default=None,
                   help="train the cells as Ray tasks: auto, ADDR (ray://host:port or host:port), or local")
    s.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per Ray task (default: 1)")
    s.add_argument("--ray-gpus", type=float, default=None,
                   help="GPUs per Ray task (default: 1 if the cluster has GPUs and --device is not cpu)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_sweep)


def _register_finetune(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "finetune",
        help="standard fine-tuning of some layer groups of a robust model (paper Appendix D)",
        description="Freeze a trained model of RUN, unfreeze the layer groups named (1 = stem+layer1, "
        "2 = layer2, 3 = layer3, 4 = layer4, 5 = fc) and train them with standard training on the "
        "train split, early stopping on the validation loss. Frozen BatchNorm layers stay in eval "
        "mode. Each variant is saved as RUN/models/<from>_ft<groups>/; figures: Figure 12 (Gradient "
        "maps) and Figure 13 (accuracies).",
    )
    f.add_argument("--run", required=True, help="run directory holding the model to fine-tune")
    f.add_argument("--from", dest="source", required=True, help="model name in RUN/models, e.g. robust_eps4")
    f.add_argument("--groups", default="5,4-5,3-5,2-5",
                   help="comma-separated variants, each a group or range of groups (default: 5,4-5,3-5,2-5)")
    f.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-5, the paper's)")
    f.add_argument("--patience", type=int, default=None, help="stop after this many epochs without val-loss improvement (10)")
    f.add_argument("--lr-patience", type=int, default=None, help="lr x0.1 after this many such epochs (5)")
    f.add_argument("--max-epochs", type=int, default=None, help="upper bound on epochs (default: 100)")
    f.add_argument("--batch-size", type=int, default=None, help="default: the run's train.phase2.batch_size")
    f.add_argument("--standard", default=None, help="the standard model for the figures (default: the run's eps = 0 model)")
    f.add_argument("--images", choices=("correct", "all"), default="correct",
                   help="Figure 12 images: correct for every model shown (paper) or any (default: correct)")
    f.add_argument("--force", action="store_true", help="re-train variants that are already complete")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the run's)")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(func=_cmd_finetune)


def _register_control(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "control",
        help="positive control: plant a shortcut, measure the models' reliance on it and whether the maps show it",
        description="Plant one synthetic artifact (ruler by default) on one class's images (mel) at each "
        "rate p, train the config's standard and robust models on each dataset (one run directory per "
        "rate under --out), measure by counterfactual renders (each test image with and without the "
        "artifact) how much each model relies on it, and test whether each saliency method's maps "
        "put more mass on it when the model relies on it. Writes OUT/control/ (tables, verdicts, "
        "report.html). Resumable: re-running skips finished rates. See docs/positive_control.md.",
    )
    add_config_args(c, default="quick")
    c.add_argument("--out", default=None, help="control folder (default: runs/<config name>_control)")
    c.add_argument("--artifact", default=None, choices=("hair", "ruler", "vignette", "bubble"),
                   help="the planted artifact (default: control.artifact, ruler)")
    c.add_argument("--planted-class", default=None, help="the class it comes with (default: control.planted_class, mel)")
    c.add_argument("--rates", default=None, help="comma-separated rates P(artifact | class) (default: control.rates, 0,0.5,0.9)")
    c.add_argument("--methods", default=None, help="comma-separated saliency methods (default: saliency.methods)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=_cmd_control)


def _cmd_run(args: argparse.Namespace) -> int:
    from robsal.experiments.run import STAGES, run_pipeline
    from robsal.errors import ConfigError

    cfg = config_from_args(args)
    if args.models:
        cfg = with_models(cfg, args.models)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    force = tuple(s for s in args.force.split(",") if s)
    known = {s.name for s in STAGES}
    for s in force:
        if s not in known:
            raise ConfigError(f"--force: unknown stage {s!r}; stages: {', '.join(sorted(known))}")
    run_pipeline(cfg, out, progress=not args.no_progress, force=force)
    return 0


def with_models(cfg, text: str):  # Config -> Config
    """``cfg`` with ``models`` chosen by ``--models``: config model names, and NAME=DIR for imported models."""
    import copy

    from robsal.config import ModelSpec, validate

    cfg = copy.deepcopy(cfg)
    known = {m.name: m for m in cfg.models}
    chosen: list[ModelSpec] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item:
            name, path = (v.strip() for v in item.split("=", 1))
            if not (Path(path) / "model.json").is_file():
                raise ConfigError(
                    f"--models {item}: {path} is not a robsal model directory (no model.json); "
                    "make one with `robsal import-model ... --out DIR`"
                )
            chosen.append(ModelSpec(name=name, path=str(Path(path).resolve())))
        elif item in known:
            chosen.append(known[item])
        else:
            raise ConfigError(
                f"--models: unknown model {item!r}; the config lists {', '.join(known)} "
                "(give NAME=DIR for a model directory)"
            )
    if not chosen:
        raise ConfigError("--models: name at least one model, e.g. --models standard,robust_eps4")
    cfg.models = chosen
    validate(cfg)
    return cfg


def _parse_band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--band must be two numbers like 3,5, got {text!r}") from None
    if lo > hi:
        raise ConfigError(f"--band {text}: the lower end is above the upper end")
    return lo, hi


# run_sweep's parameters (as its errors name them) -> the sweep's flags
_SWEEP_FLAGS = {"grid": "--grid", "images": "--images", "retries": "--retries", "ray_address": "--ray-address",
                "direction": "--optimum-direction", "band": "--band"}
_SWEEP_KEY = re.compile(r"^({0})\b|\b({0})=".format("|".join(_SWEEP_FLAGS)))


def sweep_flags(message: str) -> str:
    """A library message in the sweep's flags: a leading ``grid``/``images``/... and every ``key=``."""
    def flag(m: re.Match) -> str:
        return _SWEEP_FLAGS[m.group(1)] if m.group(1) else _SWEEP_FLAGS[m.group(2)] + "="

    return _SWEEP_KEY.sub(flag, message)


def _cmd_sweep(args: argparse.Namespace) -> int:
    # imported here: the sweep pulls in torch and the training stack, which `robsal --help` does not need
    from robsal.experiments.sweep import OptimumSpec, run_sweep, summary_lines
    from robsal.io import read_json

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}_sweep"
    optimum = OptimumSpec(args.optimum_metric, args.optimum_method, args.optimum_direction, _parse_band(args.band))
    try:
        result = run_sweep(
            cfg, args.grid, out, device=args.device, progress=not args.no_progress, images=args.images,
            retries=args.retries, ray_address=args.ray_address, ray_cpus=args.ray_cpus, ray_gpus=args.ray_gpus,
            optimum=optimum, figure_method=args.figure_method, figures=not args.no_figures,
        )
    except UserError as exc:
        raise type(exc)(sweep_flags(str(exc))) from None
    if result.table is not None:
        table_json = out / "sweep" / "table.json"
        gate = read_json(table_json).get("gate") if table_json.exists() else None
        for line in summary_lines(result.table, result.optimum, gate):
            print(line)
    if result.failed:
        details = "; ".join(f"{n}: {result.cells[n].errors[-1] if result.cells[n].errors else 'failed'}"
                            for n in result.failed)
        print(f"robsal: error: {len(result.failed)} of {len(result.cells)} cells failed ({details}); "
              "re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


# the command-line flag of each fine-tuning setting a library error may name
FINETUNE_FLAGS = {"lr": "--lr", "patience": "--patience", "lr_patience": "--lr-patience",
                  "max_epochs": "--max-epochs", "batch_size": "--batch-size", "groups": "--groups",
                  "images": "--images", "standard": "--standard"}


def _cmd_finetune(args: argparse.Namespace) -> int:
    from robsal.errors import ConfigError
    from robsal.experiments.finetune import FinetuneSettingError, FinetuneSettings, parse_groups, run_finetune

    defaults = FinetuneSettings()
    settings = FinetuneSettings(
        lr=defaults.lr if args.lr is None else args.lr,
        patience=defaults.patience if args.patience is None else args.patience,
        lr_patience=defaults.lr_patience if args.lr_patience is None else args.lr_patience,
        max_epochs=defaults.max_epochs if args.max_epochs is None else args.max_epochs,
        batch_size=args.batch_size,
    )
    try:
        settings.check(positive_lr=True)
        variants = parse_groups(args.groups)
        result = run_finetune(
            args.run, args.source, variants, settings=settings, standard=args.standard, images=args.images,
            device=args.device, progress=not args.no_progress, force=args.force,
        )
    except FinetuneSettingError as exc:  # the library names settings; say which flag
        if exc.setting not in FINETUNE_FLAGS:
            raise
        raise ConfigError(f"{FINETUNE_FLAGS[exc.setting]} {exc.detail}") from None
    for line in result.lines():
        print(line)
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    from robsal.errors import ConfigError
    from robsal.experiments.control import run_control

    overrides = list(args.overrides or [])
    if args.artifact:
        overrides.append(f"control.artifact={args.artifact}")
    if args.planted_class:
        overrides.append(f"control.planted_class={args.planted_class}")
    if args.rates:
        try:
            rates = [float(r) for r in args.rates.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--rates must be numbers like 0,0.5,0.9, got {args.rates!r}") from None
        overrides.append(f"control.rates=[{', '.join(repr(r) for r in rates)}]")
    if args.methods:
        overrides.append(f"control.methods=[{', '.join(m.strip() for m in args.methods.split(',') if m.strip())}]")
    args.overrides = overrides
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}_control"
    result = run_control(cfg, out, progress=not args.no_progress)
    for line in result.lines():
        print(line)
    return 0
