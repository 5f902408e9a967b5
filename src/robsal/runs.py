"""The run directory: creation, resolved config, stage bookkeeping.

Layout (a contract; see DESIGN.md)::

    RUN/config.yaml   RUN/splits.csv   RUN/models/<name>/...   RUN/saliency/<model>/<method>.npz
    RUN/metrics/...   RUN/figures/...  RUN/report.html         RUN/stages.json

``stages.json`` maps a stage name to its completion record (time, seconds, and a
fingerprint of the config sections the stage depends on). A stage is done when
its record exists and its fingerprint still matches.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from robsal.config import Config, from_dict, load_run_config
from robsal.errors import ConfigError
from robsal.io import read_json, write_json, write_text
from robsal.utils import git_commit

STAGES_FILE = "stages.json"


def init_run(
    cfg: Config, run_dir: str | Path, *, allow_changed: bool = False, accept_without_results: bool = True
) -> Path:
    """Create ``run_dir`` and write ``config.yaml``.

    If the directory already holds a config that differs from ``cfg`` (other than the
    device and the thread count, which change speed, not results), refuse unless
    ``allow_changed``: reusing a run with another config would mix results. A folder with no
    result yet (:func:`has_results`: e.g. a first run that stopped at a wrong ``--data``)
    takes the new config, and the splits drawn for the old one are dropped, unless
    ``accept_without_results`` is False (sweeps, whose folder holds a grid).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and not allow_changed:
        old = load_run_config(run_dir).to_dict()
        new = cfg.to_dict()
        for key in ("device", "threads"):
            old.pop(key, None)
            new.pop(key, None)
        if old != new:
            if not accept_without_results or has_results(run_dir):
                raise ConfigError(
                    f"{run_dir} was made with another config ({_first_difference(old, new)}); "
                    "use a new --out folder or the same config"
                )
            (run_dir / "splits.csv").unlink(missing_ok=True)  # drawn for the old config's data
    write_text(cfg_path, cfg.to_yaml())
    meta_path = run_dir / "run.json"
    meta = read_json(meta_path) if meta_path.exists() else {"created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    meta.update({"commit": git_commit(), "seed": cfg.seed, "config_name": cfg.name})
    write_json(meta_path, meta)
    return run_dir


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
    return f"{prefix}: {old!r} -> {new!r}"


def fingerprint(cfg: Config, *sections: str) -> str:
    """Hash of the named config sections (all of them when none are named)."""
    d = cfg.to_dict()
    part = {s: d[s] for s in sections} if sections else d
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def has_results(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds any finished work: a finished stage, a trained model, maps, metrics, a tuning."""
    run_dir = Path(run_dir)
    if read_stages(run_dir):
        return True
    return any(
        any(run_dir.glob(pattern))
        for pattern in ("models/*/model.json", "saliency/*.npz", "metrics/summary.json", "tune/best.json", "sweep/*")
    )


def read_stages(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STAGES_FILE
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except json.JSONDecodeError:
        return {}


def is_done(run_dir: str | Path, stage: str, fp: str | None = None) -> bool:
    rec = read_stages(run_dir).get(stage)
    return rec is not None and (fp is None or rec.get("fingerprint") == fp)


def mark_done(run_dir: str | Path, stage: str, seconds: float | None = None, fp: str | None = None, **info: Any) -> None:
    stages = read_stages(run_dir)
    stages[stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds, "fingerprint": fp, **info}
    write_json(Path(run_dir) / STAGES_FILE, stages)


def clear_stage(run_dir: str | Path, stage: str) -> None:
    stages = read_stages(run_dir)
    if stages.pop(stage, None) is not None:
        write_json(Path(run_dir) / STAGES_FILE, stages)


def config_from_yaml_text(text: str) -> Config:
    return from_dict(yaml.safe_load(text) or {})


# what every folder robsal ran in holds
RUN_MARKERS = ("config.yaml", "run.json", "stages.json", "models", "splits.csv")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder that robsal has run in (it holds one of :data:`RUN_MARKERS`)."""
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in RUN_MARKERS)


def writes_run(fn):  # noqa: ANN001, ANN201  (a decorator keeps the signature)
    """Hold the run lock (re-entrant) while ``fn(run_dir, ...)`` writes into an existing run folder.

    Every stage function that writes into ``RUN/`` (explain, evaluate, report, robustness)
    is decorated, so ``robsal explain --run R`` cannot rewrite maps while ``robsal run`` is
    evaluating ``R``; inside ``robsal run``, which already holds the lock, it is re-entered.
    A folder that is not a run (or does not exist) is left to ``fn`` to report; no lock file
    is created in it.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(run_dir, *args, **kwargs):  # noqa: ANN001, ANN202
        if not is_run_dir(run_dir):  # fn refuses it (or reports an empty folder); no .lock left there
            return fn(run_dir, *args, **kwargs)
        with RunLock(run_dir, reentrant=True):
            return fn(run_dir, *args, **kwargs)

    return wrapper


class RunLock:
    """An exclusive lock on a run directory (``RUN/.lock``), held while a command writes to it.

    A second process that tries to use the same run directory is refused with a
    message naming the holder's PID, instead of both writing the same files.
    The lock is an ``fcntl`` lock, released by the OS if the holder dies. A second lock
    in the same process conflicts too, unless it is made with ``reentrant=True`` (the
    training stage takes the lock that ``robsal run`` may already hold).
    """

    _held: dict[str, list[Any]] = {}  # real path of the lock file -> [file handle, depth]

    def __init__(self, run_dir: str | Path, *, reentrant: bool = False) -> None:
        self.path = Path(run_dir) / ".lock"
        self.reentrant = reentrant
        self._key: str | None = None

    def __enter__(self) -> RunLock:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        held = RunLock._held.get(key)
        if held is not None and self.reentrant:
            held[1] += 1
            self._key = key
            return self
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ConfigError(
                f"{self.path.parent} is in use by PID {holder}; wait for it to finish or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        RunLock._held[key] = [fh, 1]
        self._key = key
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._key is None:
            return
        held = RunLock._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del RunLock._held[self._key]
            fcntl.flock(held[0].fileno(), fcntl.LOCK_UN)
            held[0].close()
        self._key = None
