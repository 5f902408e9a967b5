"""How the cells of a sweep are trained: in this process or as Ray tasks.

Both executors have one method, ``train(cfg, out, data, cells, statuses, *, device, progress)``:
it trains ``cells`` (the unfinished ones) into the sweep directory ``out``, retries a cell that
raises ``retries`` more times while the other cells go on, records every attempt in
``statuses`` and ``SWEEP/sweep/cells.json``, and returns ``statuses``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from robsal.config import Config, from_dict
from robsal.errors import UserError
from robsal.experiments.sweep.grid import SWEEP_SUBDIR, Cell
from robsal.experiments.sweep.ledger import tuned_training
from robsal.io import write_bytes, write_json
from robsal.training import train_models
from robsal.utils import say


@dataclass
class CellStatus:
    name: str
    eps: float
    seed: int
    state: str = "pending"  # pending | done (earlier) | trained | failed
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("done", "trained")


def write_status(out: Path, statuses: Mapping[str, CellStatus]) -> None:
    """``SWEEP/sweep/cells.json``: every cell's state, attempts and errors."""
    write_json(out / SWEEP_SUBDIR / "cells.json", {n: s.__dict__ for n, s in statuses.items()})


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class Executor(Protocol):
    def train(
        self, cfg: Config, out: Path, data: Any, cells: Sequence[Cell], statuses: dict[str, CellStatus], *,
        device: Any, progress: bool,
    ) -> dict[str, CellStatus]: ...


def train_cell(cfg: Config, out: Path, data: Any, cell: Cell, *, device: Any, progress: bool) -> None:
    """Train one cell in this process (``robsal.training.train_models`` restricted to it)."""
    train_models(cfg, out, data, device=device, names=[cell.name], progress=progress)


@dataclass
class LocalExecutor:
    """Train the cells one after the other in this process with ``train_one`` (default :func:`train_cell`)."""

    retries: int = 1
    train_one: Callable[..., None] = train_cell

    def train(
        self, cfg: Config, out: Path, data: Any, cells: Sequence[Cell], statuses: dict[str, CellStatus], *,
        device: Any, progress: bool,
    ) -> dict[str, CellStatus]:
        for k, cell in enumerate(cells, 1):
            st = statuses[cell.name]
            while st.attempts <= self.retries:
                st.attempts += 1
                say(f"cell {cell.name} ({k}/{len(cells)}): training (attempt {st.attempts})")
                t0 = time.perf_counter()
                try:
                    self.train_one(cfg, out, data, cell, device=device, progress=progress)
                except Exception as exc:  # noqa: BLE001  a failed cell must not stop the others
                    st.errors.append(first_line(exc))
                    more = "retrying" if st.attempts <= self.retries else "giving up; the other cells go on"
                    say(f"cell {cell.name}: failed ({st.errors[-1]}); {more}")
                    st.state = "failed"
                else:
                    st.state, st.seconds = "trained", round(time.perf_counter() - t0, 2)
                    say(f"cell {cell.name}: trained in {st.seconds:.1f} s")
                write_status(out, statuses)
                if st.ok:
                    break
        return statuses


def _ray_train_cell(
    cfg_dict: dict[str, Any], name: str, data: Any, tuned: dict[str, Any] | None, threads: int, use_gpu: bool
) -> dict[str, bytes]:
    """Ray task: train one cell in a scratch run directory; return its files (relative path -> bytes).

    The driver writes them into the sweep directory, so workers need no shared file system:
    the config travels as a dict and the prepared data through Ray's object store.
    """
    torch.set_num_threads(max(1, int(threads)))
    cfg = from_dict(cfg_dict)
    with tempfile.TemporaryDirectory(prefix="robsal-cell-") as tmp:
        if tuned:
            write_json(Path(tmp) / "tune" / "best.json", tuned)
        train_models(cfg, tmp, data, device="cuda" if use_gpu else "cpu", names=[name], progress=False)
        root = Path(tmp) / "models" / name
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "checkpoint" not in p.relative_to(root).parts
        }


def write_cell_files(out: Path, name: str, files: Mapping[str, bytes]) -> None:
    """Write a cell's files; model.json (the completeness marker) last."""
    model_dir = out / "models" / name
    for rel in sorted(files, key=lambda r: r == "model.json"):
        write_bytes(model_dir / rel, files[rel])


def _import_ray():
    try:
        import ray  # optional dependency: robsal[ray]
    except ImportError:
        raise UserError("ray_address needs Ray: pip install 'robsal[ray]' (or run the sweep without it)") from None
    return ray


@dataclass
class RayExecutor:
    """One Ray task per cell at ``address`` (``auto``, an address, or ``local`` for a fresh local
    instance), each asking for ``cpus`` CPUs and ``gpus`` GPUs (None: 1 when the cluster has GPUs
    and the config's device is not cpu). The task returns the cell's files; this process writes them."""

    address: str
    cpus: float = 1.0
    gpus: float | None = None
    retries: int = 1

    def train(
        self, cfg: Config, out: Path, data: Any, cells: Sequence[Cell], statuses: dict[str, CellStatus], *,
        device: Any = None, progress: bool = True,
    ) -> dict[str, CellStatus]:
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            try:
                ray.init(address=None if self.address == "local" else self.address, log_to_driver=progress)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"ray_address {self.address}: cannot connect to Ray ({first_line(exc)})") from None
            started = True
        try:
            self._run(ray, cfg, out, data, cells, statuses)
        finally:
            if started:
                ray.shutdown()
        return statuses

    def _run(self, ray: Any, cfg: Config, out: Path, data: Any, cells: Sequence[Cell],
             statuses: dict[str, CellStatus]) -> None:
        """Submit every cell, collect them as they finish, resubmit a failed one while attempts remain."""
        gpus = self.gpus
        if gpus is None:
            gpus = 1.0 if cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        task = ray.remote(num_cpus=self.cpus, num_gpus=gpus, max_retries=0)(_ray_train_cell)
        _, tuned = tuned_training(cfg, out)
        cfg_dict, data_ref = cfg.to_dict(), ray.put(data)
        threads = max(1, int(self.cpus))

        def submit(cell: Cell):
            statuses[cell.name].attempts += 1
            return task.remote(cfg_dict, cell.name, data_ref, tuned, threads, gpus > 0)

        say(f"ray: {len(cells)} cell(s), {self.cpus:g} CPU and {gpus:g} GPU each")
        running = {submit(c): (c, time.perf_counter()) for c in cells}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            cell, t0 = running.pop(ready[0])
            st = statuses[cell.name]
            try:
                files = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001  RayTaskError wraps the cell's own exception
                st.errors.append(first_line(getattr(exc, "cause", None) or exc))
                st.state = "failed"
                if st.attempts <= self.retries:
                    say(f"cell {cell.name}: failed ({st.errors[-1]}); retrying")
                    running[submit(cell)] = (cell, time.perf_counter())
                else:
                    say(f"cell {cell.name}: failed ({st.errors[-1]}); giving up; the other cells go on")
            else:
                write_cell_files(out, cell.name, files)
                st.state, st.seconds = "trained", round(time.perf_counter() - t0, 2)
                say(f"cell {cell.name}: trained on Ray in {st.seconds:.1f} s")
            write_status(out, statuses)
