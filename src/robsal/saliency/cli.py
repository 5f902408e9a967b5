"""``robsal explain``: saliency maps of a run's models, or of any model on image files."""

from __future__ import annotations

import argparse

from robsal.cli import add_config_args, config_from_args
from robsal.errors import ConfigError
from robsal.saliency.images import explain_files
from robsal.saliency.run import explain_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="saliency maps of a run's models (RUN/saliency, RUN/figures) or of image files",
        description="Either --run RUN: explain the run's test images with its models and write "
        "RUN/saliency/<model>/<method>.npz and RUN/figures/saliency_*.png|pdf; or --model DIR "
        "--image FILE --out DIR: explain image files with one or more model directories.",
    )
    p.add_argument("--run", default=None, help="run directory made by `robsal run` / `robsal train`")
    p.add_argument("--models", nargs="+", default=None, help="with --run: model names (default: all of the run)")
    p.add_argument("--methods", "--method", nargs="+", default=None, help="method names (default: the config's)")
    p.add_argument("--images", nargs="+", default=None, help="with --run: image ids to explain")
    p.add_argument("--n-per-class", type=int, default=None, help="with --run: images per class (default: config)")
    p.add_argument("--model", action="append", default=[], help="model directory (repeatable), with --image")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable), with --model")
    p.add_argument("--target", default=None, help="with --image: class name or index (default: predicted class)")
    p.add_argument("--out", default=None, help="with --image: output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_args(p, default="quick")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    if args.run and (args.model or args.image):
        raise ConfigError("give either --run RUN or --model DIR --image FILE, not both")
    if args.run:
        if args.n_per_class is not None and args.n_per_class < 1:
            raise ConfigError(f"--n-per-class must be >= 1, got {args.n_per_class}")
        out = explain_run(
            args.run,
            models=args.models,
            methods=args.methods,
            image_ids=args.images,
            n_per_class=args.n_per_class,
            device=args.device,
            progress=not args.no_progress,
        )
        n = sum(len(v) for v in out.values())
        print(f"wrote {n} saliency files under {args.run}/saliency and figures under {args.run}/figures")
        return 0
    if not args.model or not args.image or not args.out:
        raise ConfigError("explain needs --run RUN, or --model DIR --image FILE --out DIR")
    cfg = config_from_args(args)
    out = explain_files(
        args.model,
        args.image,
        args.out,
        cfg,
        methods=args.methods,
        target=args.target,
        device=args.device,
        progress=not args.no_progress,
    )
    n = sum(len(v) for v in out.values())
    print(f"wrote {n} saliency files under {args.out}/saliency and figures under {args.out}/figures")
    return 0
