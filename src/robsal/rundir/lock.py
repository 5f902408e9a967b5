"""The run lock: one writer per run directory (``RUN/.lock``)."""

from __future__ import annotations

import fcntl
import functools
import os
from pathlib import Path
from typing import Any

from robsal.errors import ConfigError
from robsal.rundir.layout import is_run_dir


def writes_run(fn):  # noqa: ANN001, ANN201  (a decorator keeps the signature)
    """Hold the run lock (re-entrant) while ``fn(run_dir, ...)`` writes into an existing run folder.

    Every stage function that writes into ``RUN/`` (explain, evaluate, report, robustness)
    is decorated, so ``robsal explain --run R`` cannot rewrite maps while ``robsal run`` is
    evaluating ``R``; inside ``robsal run``, which already holds the lock, it is re-entered.
    A folder that is not a run (or does not exist) is left to ``fn`` to report; no lock file
    is created in it.
    """

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
        if self._key is None:
            return
        held = RunLock._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del RunLock._held[self._key]
            fcntl.flock(held[0].fileno(), fcntl.LOCK_UN)
            held[0].close()
        self._key = None
