"""``robsal`` command line: a thin layer over the stage functions.

Each package contributes its subcommands through a ``register(subparsers)``
function in its ``cli`` module; this file only wires them together and turns
:class:`~robsal.errors.UserError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import warnings
from collections.abc import Sequence

from robsal import __version__
from robsal.errors import UserError

# Modules that provide subcommands, in the order `robsal --help` lists them.
COMMAND_MODULES = (
    "robsal.experiments.cli",  # run
    "robsal.data.cli",  # data synth, data check
    "robsal.training.cli",  # tune, train, evaluate-robustness
    "robsal.models.cli",  # import-model
    "robsal.saliency.cli",  # explain
    "robsal.metrics.cli",  # evaluate
    "robsal.report.cli",  # report
)


def add_config_args(p: argparse.ArgumentParser, default: str | None = "quick") -> None:
    """--config and --set, shared by every command that reads a config."""
    p.add_argument(
        "--config",
        "-c",
        default=default,
        help=f"preset name (tiny, quick, paper) or YAML file (default: {default})",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.phase2.epochs=3 (repeatable)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the config's)")


def config_from_args(args: argparse.Namespace):  # -> Config
    from robsal.config import load_config

    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "threads", None) is not None:
        overrides.append(f"threads={args.threads}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
        if not any(o.startswith("data.source=") for o in overrides):
            overrides.append("data.source=auto")
    cfg = load_config(args.config, overrides)
    if cfg.threads is not None:  # the config's count (or --threads) replaces the default set in main()
        from robsal.threads import set_threads

        set_threads(cfg.threads)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robsal",
        description="Robust saliency: adversarial training for sharper, measured explanations "
        "of medical-image classifiers (Margeloiu et al. 2020).",
    )
    parser.add_argument("--version", action="version", version=f"robsal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    _add_threads_option(sub)
    return parser


def _add_threads_option(sub: argparse._SubParsersAction) -> None:
    """``--threads N`` on every (sub)command: torch's CPU threads (robsal.threads)."""
    for p in sub.choices.values():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for inner in nested:
                _add_threads_option(inner)
        elif not any("--threads" in a.option_strings for a in p._actions):
            p.add_argument(
                "--threads", type=_thread_count, default=None, metavar="N",
                help="CPU threads for torch (default: the config's, else the CPUs this process may use)",
            )


def _thread_count(text: str) -> int:
    from robsal.threads import parse_threads

    try:
        n = parse_threads(text, "--threads")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if n is None:
        raise argparse.ArgumentTypeError("--threads needs a number, e.g. --threads 2")
    return n


_python_formatwarning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """robsal's own warnings as one readable line; others keep Python's format."""
    if issubclass(category, UserWarning) and "robsal" in str(filename):
        return f"robsal: warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


# errors of the file system that the user fixes (a path, a permission, a full disk), not bugs
_FS_ERRNOS = {
    errno.EACCES: "permission denied; choose a folder you may write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you may write to",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable one",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another --out folder or move the file",
    errno.EEXIST: "a file of that name already exists; choose another --out folder or move the file",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.ENOSPC: "no space left on the device; free space or choose another folder, then re-run",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}
if hasattr(errno, "EDQUOT"):
    _FS_ERRNOS[errno.EDQUOT] = "disk quota exceeded; free space or choose another folder, then re-run"


def file_system_message(exc: OSError) -> str | None:
    """One line for an OSError the user can fix (naming the path), or None for any other."""
    hint = _FS_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if hint is None:
        return None
    where = exc.filename if exc.filename is not None else "a file robsal writes"
    return f"{where}: {exc.strerror or 'error'} ({hint})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.formatwarning = _one_line_warning
    from robsal.signals import EXIT_CODES, Terminated, handle_termination

    # Ctrl-C raises KeyboardInterrupt, SIGTERM raises Terminated; checkpoint writes hold both
    # until the file is complete (robsal.signals.deferred), finished work stays on disk.
    try:
        from robsal.threads import set_threads

        set_threads(getattr(args, "threads", None))  # ROBSAL_THREADS or the process's CPUs
        with handle_termination():
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"robsal: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused: permissions, read-only, a file where a folder goes
        message = file_system_message(exc)
        if message is None:
            raise
        print(f"robsal: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robsal: interrupted (SIGINT); finished work is saved; re-run the same command to resume",
              file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    except Terminated:
        print("robsal: terminated (SIGTERM); finished work is saved; re-run the same command to resume",
              file=sys.stderr)
        return EXIT_CODES[signal.SIGTERM]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
