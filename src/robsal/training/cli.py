"""Subcommands ``robsal tune``, ``robsal train`` and ``robsal evaluate-robustness``.

``robsal tune`` and ``robsal train`` hold the run lock from before they write
``config.yaml`` until they finish. ``robsal train`` started by ``torchrun`` trains
data-parallel (:mod:`robsal.training.distributed`; docs/scaling.md): rank 0 takes the
lock, writes the config and prepares the data, then every process loads the data and trains.

Every command module is imported when ``robsal`` starts (to list its subcommands), so the
modules that load PyTorch are imported inside the commands: ``robsal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from robsal.cli import add_config_args, config_from_args
from robsal.config import load_run_config
from robsal.errors import CheckpointError, ConfigError, UserError


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", "-o", required=True, type=Path, help="run directory (created if needed)")
    p.add_argument("--data", default=None, help="dataset folder (HAM10000 layout or class folders)")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="local torchvision ImageNet checkpoint (.pth or .safetensors); never downloaded")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


@contextlib.contextmanager
def _setup(args: argparse.Namespace, *, data_parallel: bool = False) -> Iterator[tuple]:
    """(config, run directory, prepared data, device) with the run lock held for the whole command.

    The lock is taken before ``config.yaml`` is written or the data prepared, so a second
    command on the same ``--out`` is refused before it changes anything. With
    ``data_parallel`` (``robsal train``) a torchrun launch joins the process group here.
    """
    from robsal.data import prepare  # type: ignore[attr-defined]
    from robsal.rundir import init_run
    from robsal.training import distributed
    from robsal.utils import resolve_device

    if args.pretrained:
        args.overrides = list(args.overrides) + ["model.pretrained=true", f"model.pretrained_path={args.pretrained}"]
    cfg = config_from_args(args)
    if not data_parallel and distributed.torchrun_env() is not None:
        raise ConfigError(
            f"robsal {args.command} runs in one process; start it without torchrun "
            "(only robsal train trains data-parallel)"
        )
    run_dir = Path(args.out)
    with distributed.session(resolve_device(cfg.device)) as device, distributed.main_lock(run_dir):
        distributed.on_main(lambda: init_run(cfg, run_dir))
        if not (run_dir / "config.yaml").exists():
            raise UserError(
                f"process {distributed.rank()} cannot see {run_dir / 'config.yaml'} that rank 0 wrote; "
                "--out must be on a filesystem shared by every node"
            )
        data = distributed.main_first(lambda: prepare(cfg, run_dir, progress=args.progress and distributed.is_main()))
        yield cfg, run_dir, data, device


def _train(args: argparse.Namespace) -> int:
    from robsal.rundir import ModelRecord
    from robsal.training import distributed
    from robsal.training.train import train_models

    with _setup(args, data_parallel=True) as (cfg, run_dir, data, device):
        names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
        start = time.perf_counter()
        dirs = train_models(cfg, run_dir, data, device=device, names=names, progress=args.progress)
        if not distributed.is_main():
            return 0
        for name, d in dirs.items():
            m = ModelRecord.trained(d / "model.json").metrics
            rob = ", ".join(f"eps {k}: {v:.3f}" for k, v in (m.robust_accuracy or {}).items())
            print(f"{name}: clean {m.clean_accuracy:.3f}, balanced {m.balanced_accuracy:.3f}; robust {rob}")
        print(f"trained {len(dirs)} model(s) into {run_dir / 'models'} in {time.perf_counter() - start:.0f} s"
              + (f" with {distributed.world_size()} processes" if distributed.active() else ""))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from robsal.training.cv import tune

    with _setup(args) as (cfg, run_dir, data, _):
        best = tune(cfg, run_dir, data, progress=args.progress)
    print(f"best: lr={best['lr']:g} batch_size={best['batch_size']} "
          f"(accuracy {best['mean_accuracy']:.3f} +- {best['std_accuracy']:.3f}); "
          f"table: {run_dir / 'tune' / 'cv_table.csv'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from robsal.rundir import RunLock

    run = args.run or args.run_pos
    if run is not None and Path(run).is_dir():
        with RunLock(run, reentrant=True):  # model.json is rewritten: one writer at a time
            return _evaluate_locked(args)
    return _evaluate_locked(args)


def _evaluate_locked(args: argparse.Namespace) -> int:
    from robsal.data import load_run_data  # type: ignore[attr-defined]
    from robsal.models import load
    from robsal.rundir import ModelMetrics, ModelRecord
    from robsal.training.evaluate import evaluate_model
    from robsal.utils import resolve_device

    if args.run is not None and args.run_pos is not None and args.run != args.run_pos:
        raise ConfigError(f"evaluate-robustness: two run directories given ({args.run_pos}, --run {args.run}); give one")
    if (args.run or args.run_pos) is None:
        raise ConfigError("evaluate-robustness: no run directory; use `robsal evaluate-robustness --run RUN`")
    run_dir = Path(args.run or args.run_pos)
    cfg = load_run_config(run_dir)
    device = resolve_device(args.device or cfg.device)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else [m.name for m in cfg.models]
    try:
        eps = [float(e) for e in args.eps.split(",")] if args.eps else None
    except ValueError:
        raise ConfigError(f"--eps {args.eps!r}: give comma-separated numbers, e.g. --eps 1,2,4") from None
    for name in names:
        if not (run_dir / "models" / name / "model.json").exists():
            raise CheckpointError(f"no trained model {name!r} in {run_dir / 'models'}; run robsal train first")
    data = load_run_data(run_dir)
    for name in names:
        path = run_dir / "models" / name / "model.json"
        model = load(path.parent, device)
        record = ModelRecord.load(path)
        metrics = evaluate_model(model, data, cfg, device=device, eps=eps, steps=args.steps,
                                 max_images=args.max_images, progress=args.progress, desc=name)
        old = record.metrics.to_dict() if record.metrics is not None else {}
        robust = dict(old.get("robust_accuracy") or {})
        robust.update(metrics["robust_accuracy"])
        metrics["robust_accuracy"] = dict(sorted(robust.items(), key=lambda kv: float(kv[0])))
        record.set(metrics=ModelMetrics.from_dict({**old, **metrics}, path))
        record.save(path)  # the weights are unchanged
        rob = ", ".join(f"eps {k}: {v:.3f}" for k, v in metrics["robust_accuracy"].items())
        print(f"{name}: clean {metrics['clean_accuracy']:.3f}; robust {rob}")
    return 0


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("tune", help="5-fold CV grid search of phase-2 lr x batch size (standard training)")
    _common(p)
    p.set_defaults(func=_tune)

    p = sub.add_parser("train", help="train every model the config lists (standard and adversarial)")
    _common(p)
    p.add_argument("--models", default=None, help="comma-separated model names (default: all in the config)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate-robustness", help="clean and PGD accuracy of a run's models (updates model.json)")
    p.add_argument("run_pos", nargs="?", default=None, metavar="RUN", help="run directory (or --run RUN)")
    p.add_argument("--run", default=None, help="run directory (as in explain, evaluate and report)")
    p.add_argument("--models", default=None, help="comma-separated model names (default: all)")
    p.add_argument("--eps", default=None, help="comma-separated eps in paper units (default: robustness.eps)")
    p.add_argument("--steps", type=int, default=None, help="PGD steps (default: robustness.steps)")
    p.add_argument("--max-images", type=int, default=None, help="robust accuracy on at most this many test images")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_evaluate)
