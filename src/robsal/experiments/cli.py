"""``robsal run``: the main job."""

from __future__ import annotations

import argparse
from pathlib import Path

from robsal.cli import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from robsal.experiments.run import STAGES, run_pipeline
    from robsal.errors import ConfigError

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    force = tuple(s for s in args.force.split(",") if s)
    known = {s.name for s in STAGES}
    for s in force:
        if s not in known:
            raise ConfigError(f"--force: unknown stage {s!r}; stages: {', '.join(sorted(known))}")
    run_pipeline(cfg, out, progress=not args.no_progress, force=force)
    return 0
