"""Sweeps over adversary power and training seed (paper Appendix C.2-C.3, Figures 10-11).

``robsal sweep --config C --grid "eps=0,1,2,4,7;seed=0,1,2" --out SWEEP`` trains one model
per grid cell (eps = 0 is standard training), explains and evaluates all of them on the
same test images, and aggregates.

Design: the sweep directory is one run directory (DESIGN.md contract) whose models are
the cells, named ``eps<eps>_seed<seed>`` (``eps4_seed1``). So every cell is trained on
the same data and splits (one ``SWEEP/splits.csv``), with the same hyper-parameters and,
for one seed, the same initial weights and data order (:mod:`robsal.training`); only eps
and seed differ. The run's ``config.yaml`` is the base config with ``models`` replaced
by the cells. Then, in order:

1. data (``robsal.data.prepare``) and, when ``tune.enabled``, the CV search once for all
   cells (the paper tunes with standard training and reuses the result);
2. training, cell by cell (or one Ray task per cell, ``--ray-address``). A finished cell
   (``model.json`` with metrics and the same training fingerprint) is skipped, so a
   re-run or a killed sweep resumes without redoing finished cells. A cell that raises
   is reported and retried once; the other cells go on. ``SWEEP/sweep/cells.json``
   records each cell's state, attempts and errors;
3. saliency maps of every finished cell on one image list (``robsal.saliency.explain_run``;
   images: test images classified correctly by every cell, the paper's rule, or
   ``--images all``: the first ``saliency.n_per_class`` per class of a seeded draw);
4. metrics (``robsal.metrics.evaluate_run``), which also measures seed stability:
   cells with the same eps differ only in their seed;
5. aggregates (always recomputed, cheap):

   ``SWEEP/sweep/table.csv|json``  long table, one row per (section, eps, method, metric):
       section ``accuracy``: clean/balanced accuracy and robust accuracy at each evaluation
       eps, mean over seeds with sd/min/max over seeds; section ``saliency``: every
       per-image metric, mean over images of the per-image mean over seeds, with a
       percentile-bootstrap CI over images and the sd of the per-seed means; section
       ``stability``: mean pairwise Spearman and SSIM of the maps of the same images
       across seeds (Figure 10), with a bootstrap CI over images.
   ``SWEEP/sweep/optimal_eps.csv|json``  per-image optimal eps (Appendix C.3,
       :mod:`robsal.experiments.per_image_eps`)
   ``SWEEP/figures/sweep_accuracy``, ``sweep_metrics_<method>``, ``sweep_stability``,
       ``sweep_grid_<method>`` (Figure 11: rows = images, columns = eps),
       ``sweep_seeds_<method>_eps<eps>`` (Figure 10: columns = seeds),
       ``sweep_optimal_eps`` (histogram), each ``.png`` and ``.pdf``.

Steps 3-4 are recorded in ``SWEEP/stages.json`` with a fingerprint of the config and the
list of finished cells, and redone only when either changes. The grid of an existing
sweep may grow (same config otherwise): old cells are kept, new ones trained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robsal.config import Config, ModelSpec, load_run_config, validate
from robsal.errors import ConfigError, DataError, UserError
from robsal.experiments.per_image_eps import PAPER_BAND, OptimumResult, band_for, optimal_eps, write_optimum
from robsal.io import atomic_open, read_json, write_bytes, write_json
from robsal.runs import RunLock, fingerprint, init_run, is_done, mark_done

GRID_KEYS = ("eps", "seed")
SWEEP_SUBDIR = "sweep"
# metrics drawn in the metric-vs-eps figures (the table has every metric)
PLOT_METRICS = (
    "relevance_mass", "relevance_mass_lift", "relevance_rank", "pointing_game", "auroc",
    "gini", "entropy", "total_variation", "spatial_autocorrelation",
    "edge_correlation", "cos_input_gradient", "deletion_gap", "insertion_auc", "max_sensitivity",
)
TABLE_COLUMNS = [
    "section", "eps", "method", "metric", "n_seeds", "n_images",
    "mean", "sd_seeds", "ci_low", "ci_high", "min", "max", "comparable",
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model trained with ``eps`` (paper units) and ``seed``."""

    name: str
    eps: float
    seed: int


def cell_name(eps: float, seed: int) -> str:
    return f"eps{float(eps):g}_seed{int(seed)}"


def parse_grid(text: str, default_seed: int = 0) -> tuple[list[float], list[int]]:
    """``"eps=0,1,2;seed=0,1"`` -> ([0.0, 1.0, 2.0], [0, 1]); seed defaults to ``[default_seed]``."""
    values: dict[str, list] = {}
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"--grid: {part!r} must look like eps=0,1,2 (keys: {', '.join(GRID_KEYS)})")
        key, raw = (s.strip() for s in part.split("=", 1))
        if key not in GRID_KEYS:
            raise ConfigError(f"--grid: unknown key {key!r}; valid keys: {', '.join(GRID_KEYS)}")
        if key in values:
            raise ConfigError(f"--grid: {key} is given twice")
        items = [v.strip() for v in raw.split(",") if v.strip()]
        if not items:
            raise ConfigError(f"--grid: {key} has no values")
        try:
            conv = [float(v) for v in items] if key == "eps" else [int(v) for v in items]
        except ValueError:
            kind = "numbers" if key == "eps" else "integers"
            raise ConfigError(f"--grid: {key} values must be {kind}, got {raw!r}") from None
        if len(set(conv)) != len(conv):
            raise ConfigError(f"--grid: {key} lists a value twice ({raw})")
        if any(v < 0 or (key == "eps" and not np.isfinite(v)) for v in conv):
            raise ConfigError(f"--grid: {key} values must be >= 0, got {raw}")
        values[key] = conv
    if "eps" not in values:
        raise ConfigError('--grid needs eps values, e.g. --grid "eps=0,1,2,4,7;seed=0,1,2"')
    return sorted(values["eps"]), sorted(values.get("seed", [int(default_seed)]))


def make_cells(eps_values: Sequence[float], seeds: Sequence[int]) -> list[Cell]:
    """Cells in training order: eps ascending, then seed."""
    return [Cell(cell_name(e, s), float(e), int(s)) for e in eps_values for s in seeds]


def sweep_config(cfg: Config, cells: Sequence[Cell]) -> Config:
    """A copy of ``cfg`` whose ``models`` are the cells."""
    out = copy.deepcopy(cfg)
    out.models = [ModelSpec(c.name, c.eps, c.seed) for c in cells]
    validate(out)
    return out


def cells_of(cfg: Config) -> list[Cell]:
    """The cells of a sweep's config (its models)."""
    return [Cell(m.name, float(m.eps), int(cfg.seed if m.seed is None else m.seed)) for m in cfg.models]


def _init_sweep(cfg: Config, out: Path) -> None:
    """``init_run``, also accepting a grown grid (same config otherwise, old cells kept)."""
    if (out / "config.yaml").exists():
        old = load_run_config(out).to_dict()
        new = cfg.to_dict()
        for d in (old, new):
            d.pop("device", None)
            d.pop("threads", None)
        old_models, new_models = old.pop("models"), new.pop("models")
        if old == new and all(m in new_models for m in old_models):
            init_run(cfg, out, allow_changed=True)
            return
    # a sweep folder keeps its grid even before any cell finished: a shrunk grid is refused
    init_run(cfg, out, accept_without_results=False)


# --------------------------------------------------------------------------- training


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _cfg_for_training(cfg: Config, out: Path) -> tuple[Config, dict[str, Any] | None]:
    from robsal.training.train import apply_tuned, tuned_hyperparameters

    tuned = tuned_hyperparameters(out)
    return apply_tuned(cfg, tuned), tuned


def cell_complete(cfg: Config, out: Path, cell: Cell) -> bool:
    """Whether the cell's model is trained with the sweep's current settings."""
    from robsal.training.train import is_complete, training_fingerprint

    cfg_t, _ = _cfg_for_training(cfg, out)
    return is_complete(out / "models" / cell.name, training_fingerprint(cfg_t, cfg_t.model_spec(cell.name)))


def train_cell(cfg: Config, out: Path, data: Any, cell: Cell, *, device: Any, progress: bool) -> None:
    """Train one cell in this process (``robsal.training.train_models`` restricted to it)."""
    from robsal.training import train_models

    train_models(cfg, out, data, device=device, names=[cell.name], progress=progress)


def _write_status(out: Path, statuses: Mapping[str, CellStatus]) -> None:
    write_json(out / SWEEP_SUBDIR / "cells.json", {n: s.__dict__ for n, s in statuses.items()})


def _train_local(
    cfg: Config, out: Path, data: Any, pending: list[Cell], statuses: dict[str, CellStatus], *,
    device: Any, progress: bool, retries: int,
) -> None:
    for k, cell in enumerate(pending, 1):
        st = statuses[cell.name]
        while st.attempts <= retries:
            st.attempts += 1
            _say(f"cell {cell.name} ({k}/{len(pending)}): training (attempt {st.attempts})")
            t0 = time.perf_counter()
            try:
                # module attribute lookup, so that tests can inject failures
                sys.modules[__name__].train_cell(cfg, out, data, cell, device=device, progress=progress)
            except Exception as exc:  # noqa: BLE001  a failed cell must not stop the others
                st.errors.append(_first_line(exc))
                more = "retrying" if st.attempts <= retries else "giving up; the other cells go on"
                _say(f"cell {cell.name}: failed ({st.errors[-1]}); {more}")
                st.state = "failed"
            else:
                st.state, st.seconds = "trained", round(time.perf_counter() - t0, 2)
                _say(f"cell {cell.name}: trained in {st.seconds:.1f} s")
            _write_status(out, statuses)
            if st.ok:
                break


def _ray_train_cell(
    cfg_dict: dict[str, Any], name: str, data: Any, tuned: dict[str, Any] | None, threads: int, use_gpu: bool
) -> dict[str, bytes]:
    """Ray task: train one cell in a scratch run directory; return its files (relative path -> bytes).

    The driver writes them into the sweep directory, so workers need no shared file system:
    the config travels as a dict and the prepared data through Ray's object store.
    """
    import torch

    from robsal.config import from_dict
    from robsal.training import train_models

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


def _write_cell_files(out: Path, name: str, files: Mapping[str, bytes]) -> None:
    """Write a cell's files; model.json (the completeness marker) last."""
    model_dir = out / "models" / name
    for rel in sorted(files, key=lambda r: r == "model.json"):
        write_bytes(model_dir / rel, files[rel])


def _train_ray(
    cfg: Config, out: Path, data: Any, pending: list[Cell], statuses: dict[str, CellStatus], *,
    address: str, cpus: float, gpus: float | None, retries: int, progress: bool,
) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("--ray-address needs Ray: pip install 'robsal[ray]' (or run the sweep without it)") from None
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, log_to_driver=progress)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--ray-address {address}: cannot connect to Ray ({_first_line(exc)})") from None
        started = True
    try:
        if gpus is None:
            gpus = 1.0 if cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_train_cell)
        _, tuned = _cfg_for_training(cfg, out)
        cfg_dict, data_ref = cfg.to_dict(), ray.put(data)
        threads = max(1, int(cpus))

        def submit(cell: Cell):
            statuses[cell.name].attempts += 1
            return task.remote(cfg_dict, cell.name, data_ref, tuned, threads, gpus > 0)

        _say(f"ray: {len(pending)} cell(s), {cpus:g} CPU and {gpus:g} GPU each")
        running = {submit(c): (c, time.perf_counter()) for c in pending}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            cell, t0 = running.pop(ref)
            st = statuses[cell.name]
            try:
                files = ray.get(ref)
            except Exception as exc:  # noqa: BLE001  RayTaskError wraps the cell's own exception
                st.errors.append(_first_line(getattr(exc, "cause", None) or exc))
                st.state = "failed"
                if st.attempts <= retries:
                    _say(f"cell {cell.name}: failed ({st.errors[-1]}); retrying")
                    running[submit(cell)] = (cell, time.perf_counter())
                else:
                    _say(f"cell {cell.name}: failed ({st.errors[-1]}); giving up; the other cells go on")
            else:
                _write_cell_files(out, cell.name, files)
                st.state, st.seconds = "trained", round(time.perf_counter() - t0, 2)
                _say(f"cell {cell.name}: trained on Ray in {st.seconds:.1f} s")
            _write_status(out, statuses)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- explain / evaluate


def any_images(data: Any, n_per_class: int, seed: int) -> list[str]:
    """Test image ids, ``n_per_class`` per class from a seeded draw, whatever the models predict."""
    test = data.indices("test")
    if len(test) == 0:
        raise DataError("the sweep has no test images to explain; check data.test_per_class")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(len(data.classes)):
        r = test[data.labels[test] == k]
        rows.append(np.sort(rng.choice(r, min(n_per_class, len(r)), replace=False)) if len(r) else r)
    return [data.image_ids[i] for i in np.concatenate(rows).astype(np.int64)]


def _stage_fp(cfg: Config, sections: Sequence[str], *extra: Any) -> str:
    base = fingerprint(cfg, *sections)
    return hashlib.sha256(json.dumps([base, *extra], default=str).encode()).hexdigest()[:16]


TRAIN_SECTIONS = ("seed", "data", "augment", "model", "train", "adversary", "models", "tune", "robustness")


# --------------------------------------------------------------------------- aggregates


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _row(section: str, eps: float, method: str, metric: str, **kw: Any) -> dict[str, Any]:
    row = {c: float("nan") for c in TABLE_COLUMNS}
    row.update({"section": section, "eps": float(eps), "method": method, "metric": metric})
    row.update(kw)
    return row


def accuracy_rows(cells: Sequence[Cell], metrics: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Clean, balanced and robust accuracy per eps: mean, sd, min, max over the seeds."""
    rows = []
    for eps in sorted({c.eps for c in cells if c.name in metrics}):
        ms = [metrics[c.name] for c in cells if c.eps == eps and c.name in metrics]
        quantities: dict[str, tuple[list[float], int | None]] = {}
        for q in ("clean_accuracy", "balanced_accuracy"):
            vals = [m[q] for m in ms if m.get(q) is not None]
            if vals:
                quantities[q] = (vals, ms[0].get("n_test"))
        keys = sorted({k for m in ms for k in (m.get("robust_accuracy") or {})}, key=float)
        for k in keys:
            vals = [m["robust_accuracy"][k] for m in ms if k in (m.get("robust_accuracy") or {})]
            quantities[f"robust_accuracy@{k}"] = (vals, (ms[0].get("robust_eval") or {}).get("n_images"))
        for q, (vals, n_img) in quantities.items():
            mean, sd = _mean_sd(vals)
            rows.append(_row("accuracy", eps, "", q, n_seeds=len(vals), n_images=n_img if n_img is not None else float("nan"),
                             mean=mean, sd_seeds=sd, min=float(np.min(vals)), max=float(np.max(vals))))
    return rows


def saliency_rows(
    per_image: pd.DataFrame, eps_of: Mapping[str, float], *, n_boot: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Every per-image metric per (eps, method): mean over images of the mean over seeds, CI over images."""
    from robsal.metrics.stats import bootstrap_ci, stable_seed

    d = per_image[per_image["model"].isin(list(eps_of))].copy()
    if d.empty:
        return []
    d["eps"] = d["model"].map(lambda m: float(eps_of[m]))
    rows = []
    for (eps, method, metric), g in d.groupby(["eps", "method", "metric"], sort=True):
        per_img = g.groupby("image_id")["value"].mean().to_numpy(dtype=np.float64)
        per_seed = g.groupby("model")["value"].mean().to_numpy(dtype=np.float64)
        mean, lo, hi = bootstrap_ci(
            per_img, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, "sweep", f"{eps:g}", method, metric)
        )
        rows.append(_row("saliency", eps, method, metric, n_seeds=len(per_seed), n_images=len(per_img),
                         mean=mean, sd_seeds=_mean_sd(per_seed)[1], ci_low=lo, ci_high=hi,
                         min=float(per_img.min()), max=float(per_img.max())))
    return rows


def stability_rows(
    per_image: pd.DataFrame, seeds_at: Mapping[float, int], *, n_boot: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Seed stability per eps (``seeds_eps<eps>`` rows of evaluate_run): mean and CI over images."""
    from robsal.metrics.stats import bootstrap_ci, stable_seed

    rows = []
    for eps, n_seeds in sorted(seeds_at.items()):
        label = f"seeds_eps{eps:g}"
        d = per_image[per_image["model"] == label]
        for (method, metric), g in d.groupby(["method", "metric"], sort=True):
            v = g["value"].to_numpy(dtype=np.float64)
            mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, alpha=alpha, seed=stable_seed(seed, label, method, metric))
            rows.append(_row("stability", eps, method, metric, n_seeds=n_seeds, n_images=len(v), mean=mean,
                             ci_low=lo, ci_high=hi, min=float(v.min()), max=float(v.max())))
    return rows


def read_table(out: str | Path) -> pd.DataFrame:
    """``SWEEP/sweep/table.csv`` as a DataFrame."""
    path = Path(out) / SWEEP_SUBDIR / "table.csv"
    if not path.exists():
        raise UserError(f"{path} is missing; run `robsal sweep` into {out} first")
    return pd.read_csv(path, keep_default_na=True).fillna({"method": ""})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@dataclass
class OptimumSpec:
    """Which per-image metric defines the optimal eps (Appendix C.3)."""

    metric: str = "relevance_mass"
    method: str = "gradient"
    direction: str | None = None  # None: robsal.experiments.per_image_eps.DIRECTIONS
    band: tuple[float, float] = PAPER_BAND


def aggregate(
    out: str | Path,
    *,
    data: Any = None,
    optimum: OptimumSpec | None = None,
    figure_method: str = "gradient",
    figures: bool = True,
) -> tuple[pd.DataFrame, OptimumResult | None]:
    """Write the sweep's tables and figures from its models and ``metrics/per_image.csv``."""
    out = Path(out)
    cfg = load_run_config(out)
    cells = cells_of(cfg)
    optimum = optimum or OptimumSpec()
    metrics: dict[str, dict[str, Any]] = {}
    for c in cells:
        path = out / "models" / c.name / "model.json"
        if path.exists():
            m = read_json(path).get("metrics")
            if m:
                metrics[c.name] = m
    ok = [c for c in cells if c.name in metrics]
    eps_of = {c.name: c.eps for c in ok}
    per_image_path = out / "metrics" / "per_image.csv"
    per_image = pd.read_csv(per_image_path) if per_image_path.exists() else pd.DataFrame(
        columns=["image_id", "model", "method", "metric", "value"])
    mc = cfg.metrics
    seeds_at: dict[float, int] = {}
    for c in ok:
        seeds_at[c.eps] = seeds_at.get(c.eps, 0) + 1
    rows = accuracy_rows(cells, metrics)
    rows += saliency_rows(per_image, eps_of, n_boot=mc.n_bootstrap, alpha=mc.alpha, seed=cfg.seed)
    rows += stability_rows(per_image, {e: n for e, n in seeds_at.items() if n >= 2},
                           n_boot=mc.n_bootstrap, alpha=mc.alpha, seed=cfg.seed)
    # the competence gate (robsal.metrics.gate): saliency aggregates compare eps values, so they
    # mean something only where every cell recognises every class and every class is explained
    overall, per_eps = sweep_gates(out, cfg, ok, metrics)
    for r in rows:
        if r["section"] != "accuracy":
            r["comparable"] = bool(overall.comparable)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    sub = out / SWEEP_SUBDIR
    with atomic_open(sub / "table.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False, float_format="%.6g")

    notes: list[str] = []
    if not overall.comparable:
        notes.append(f"not comparable: {overall.reason}")
    result: OptimumResult | None = None
    band = band_for(optimum.band, cfg.data.image_size, cfg.adversary.eps_reference_size, cfg.adversary.eps_scaling)
    if len(eps_of) and not per_image.empty:
        try:
            result = optimal_eps(per_image, eps_of, metric=optimum.metric, method=optimum.method,
                                 direction=optimum.direction, band=band)
        except DataError as exc:
            notes.append(f"no per-image optimal eps: {exc}")
        else:
            write_optimum(result, sub, out / "figures" / "sweep_optimal_eps" if figures else None)
    figure_paths: list[str] = []
    if figures and len(table):
        figure_paths = [str(p.relative_to(out)) for p in write_figures(out, cfg, table, ok, data, figure_method)]
    doc = {
        "grid": {"eps": sorted({c.eps for c in cells}), "seed": sorted({c.seed for c in cells})},
        "cells": read_json(sub / "cells.json") if (sub / "cells.json").exists() else {},
        "columns": TABLE_COLUMNS,
        "rows": table.to_dict(orient="records"),
        "optimal_eps": result.summary() if result is not None else None,
        "comparable": overall.comparable,
        "gate": {**overall.to_dict(), "per_eps": {f"{e:g}": g.to_dict() for e, g in per_eps.items()}},
        "settings": {
            "accuracy": "mean over seeds; sd_seeds/min/max over seeds",
            "saliency": "per image: mean over the seeds of an eps; mean over images with a percentile-bootstrap "
                        f"{1 - mc.alpha:.0%} CI over images ({mc.n_bootstrap} resamples); sd_seeds: sd of the "
                        "per-seed means",
            "stability": "per image: mean over seed pairs of Spearman / SSIM between maps; CI over images",
            "eps_units": (f"paper units (L2 at {cfg.adversary.eps_reference_size} px, scaled by "
                          f"{cfg.adversary.eps_scaling})" if cfg.adversary.eps_reference_size else "raw radii"),
        },
        "figures": figure_paths,
        "notes": notes,
    }
    write_json(sub / "table.json", _json_safe(doc))
    return table, result


def sweep_gates(
    out: Path, cfg: Config, ok: Sequence[Cell], metrics: Mapping[str, dict[str, Any]]
) -> tuple[Any, dict[float, Any]]:
    """The competence gate over every trained cell (overall) and over the cells of each eps.

    The explained images per class come from the metrics stage (``metrics/summary.json``)
    or the image selection (``saliency/selection.json``); before either exists only recall
    is checked.
    """
    from robsal.metrics import gate

    classes = list(cfg.data.classes)
    explained = None
    summary_path, sel_path = out / "metrics" / "summary.json", out / "saliency" / "selection.json"
    if summary_path.exists():
        explained = read_json(summary_path).get("explained_per_class")
    if explained is None and sel_path.exists():
        explained = read_json(sel_path).get("selected")
    kw = {"min_recall": cfg.metrics.min_recall, "min_explained_per_class": cfg.min_explained()}
    overall = gate.check({c.name: metrics[c.name] for c in ok}, classes, explained, **kw)
    per_eps = {
        eps: gate.check({c.name: metrics[c.name] for c in ok if c.eps == eps}, classes, explained, **kw)
        for eps in sorted({c.eps for c in ok})
    }
    return overall, per_eps


def summary_lines(table: pd.DataFrame, result: OptimumResult | None, gate: Mapping[str, Any] | None = None) -> list[str]:
    """Terminal lines: accuracy per eps, the competence gate when it failed, the optimum share."""
    lines = []
    acc = table[table["section"] == "accuracy"]
    for eps, g in acc.groupby("eps", sort=True):
        parts = []
        for _, r in g.iterrows():
            if r["metric"] == "balanced_accuracy":
                continue
            sd = "" if not np.isfinite(r["sd_seeds"]) else f" +- {r['sd_seeds']:.1%}"
            label = "clean" if r["metric"] == "clean_accuracy" else r["metric"].replace("robust_accuracy", "robust")
            parts.append(f"{label} {r['mean']:.1%}{sd}")
        n = int(g["n_seeds"].max())
        lines.append(f"eps {eps:g} ({n} seed{'s' if n != 1 else ''}): " + ", ".join(parts))
    if gate is not None and not gate.get("comparable", True):
        lines.append(f"not comparable: {'; '.join(gate.get('reasons') or [])}")
    if result is not None and result.share_in_band is not None:
        lines.append(
            f"optimal eps per image ({result.method}, {result.metric}): {result.share_in_band:.0%} of "
            f"{result.n_images} images in [{result.band[0]:g}, {result.band[1]:g}]; counts "
            + ", ".join(f"eps {e:g}: {n}" for e, n in result.counts.items())
        )
    return lines


# --------------------------------------------------------------------------- figures


def _spread(labels: np.ndarray, limit: int) -> list[int]:
    """Up to ``limit`` positions, taking the classes in turn."""
    queues = [list(np.flatnonzero(labels == k)) for k in sorted(set(labels.tolist()))]
    out: list[int] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)


def write_figures(
    out: Path, cfg: Config, table: pd.DataFrame, ok: Sequence[Cell], data: Any, method: str
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robsal.saliency.figures import save_figure

    fig_dir = out / "figures"
    paths: list[Path] = []

    def line(ax, d: pd.DataFrame, label: str, band: bool) -> None:
        d = d.sort_values("eps")
        ax.plot(d["eps"], d["mean"], marker="o", label=label)
        lo, hi = ("ci_low", "ci_high") if band else ("min", "max")
        if d[lo].notna().any():
            ax.fill_between(d["eps"], d[lo], d[hi], alpha=0.2)

    acc = table[table["section"] == "accuracy"]
    if len(acc):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for metric in sorted(set(acc["metric"]), key=lambda m: (m != "clean_accuracy", m)):
            if metric == "balanced_accuracy":
                continue
            line(ax, acc[acc["metric"] == metric], metric.replace("_accuracy", ""), band=False)
        ax.set_xlabel("training eps (paper units)")
        ax.set_ylabel("test accuracy (mean; band: min-max over seeds)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        paths += save_figure(fig, fig_dir / "sweep_accuracy")

    sal = table[table["section"] == "saliency"]
    for m in sorted(set(sal["method"])):
        d = sal[sal["method"] == m]
        shown = [x for x in PLOT_METRICS if (d["metric"] == x).any()]
        if not shown:
            continue
        ncol = min(4, len(shown))
        nrow = (len(shown) + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.4 * nrow), squeeze=False)
        for ax, metric in zip(axes.ravel(), shown):
            line(ax, d[d["metric"] == metric], metric, band=True)
            ax.set_title(metric, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(shown):]:
            ax.axis("off")
        fig.suptitle(f"{m}: metric vs training eps (mean, {1 - cfg.metrics.alpha:.0%} bootstrap CI over images)",
                     fontsize=9)
        fig.tight_layout()
        paths += save_figure(fig, fig_dir / f"sweep_metrics_{m}")

    stab = table[table["section"] == "stability"]
    if len(stab):
        shown = sorted(set(stab["metric"]))
        fig, axes = plt.subplots(1, len(shown), figsize=(4.0 * len(shown), 3.0), squeeze=False)
        for ax, metric in zip(axes[0], shown):
            for m in sorted(set(stab["method"])):
                line(ax, stab[(stab["metric"] == metric) & (stab["method"] == m)], m, band=True)
            ax.set_title(f"{metric} across seeds", fontsize=9)
            ax.set_xlabel("training eps")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        paths += save_figure(fig, fig_dir / "sweep_stability")

    paths += _map_grids(out, cfg, ok, data, method)
    return paths


def _map_grids(out: Path, cfg: Config, ok: Sequence[Cell], data: Any, method: str) -> list[Path]:
    """Figure 11 (rows = images, columns = eps; the smallest seed of each eps) and Figure 10
    (per eps with several seeds: columns = seeds)."""
    from robsal.io import load_npz
    from robsal.saliency.figures import method_grid

    maps: dict[str, np.ndarray] = {}
    ids = None
    for c in ok:
        path = out / "saliency" / c.name / f"{method}.npz"
        if path.exists():
            arr = load_npz(path)
            maps[c.name] = arr["maps"]
            ids = arr["image_ids"].astype(str) if ids is None else ids
    if not maps or ids is None:
        return []
    if data is None:
        from robsal.data import load_run_data

        data = load_run_data(out)
    rows = data.rows_of(list(ids))
    show = _spread(data.labels[rows], cfg.saliency.figure_images)
    if not show:
        return []
    images = np.asarray(data.images[rows[show]])
    row_labels = [f"{ids[i]} ({data.classes[data.labels[rows[i]]]})" for i in show]
    norm = cfg.saliency.reduction
    paths: list[Path] = []
    by_eps: dict[float, list[Cell]] = {}
    for c in ok:
        if c.name in maps:
            by_eps.setdefault(c.eps, []).append(c)
    columns = {}
    for eps in sorted(by_eps):
        c = min(by_eps[eps], key=lambda x: x.seed)
        label = f"eps {eps:g}" + (" (standard)" if eps == 0 else "")
        columns[f"{label}, seed {c.seed}"] = maps[c.name][show]
    paths += method_grid(images, columns, out / "figures" / f"sweep_grid_{method}",
                         title=f"{method} maps vs training eps (Figure 11)", row_labels=row_labels,
                         normalisation=norm)
    for eps, group in sorted(by_eps.items()):
        if len(group) < 2:
            continue
        cols = {f"seed {c.seed}": maps[c.name][show] for c in sorted(group, key=lambda x: x.seed)}
        paths += method_grid(images, cols, out / "figures" / f"sweep_seeds_{method}_eps{eps:g}",
                             title=f"{method} maps, eps {eps:g}, seeds (Figure 10)", row_labels=row_labels,
                             normalisation=norm)
    return paths


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    out: Path
    cells: dict[str, CellStatus]
    table: pd.DataFrame | None
    optimum: OptimumResult | None

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.cells.items() if not s.ok]


def run_sweep(
    cfg: Config,
    grid: str | tuple[Sequence[float], Sequence[int]],
    out: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    images: str = "correct",
    retries: int = 1,
    ray_address: str | None = None,
    ray_cpus: float = 1.0,
    ray_gpus: float | None = None,
    optimum: OptimumSpec | None = None,
    figure_method: str = "gradient",
    figures: bool = True,
) -> SweepResult:
    """Train, explain, evaluate and aggregate every cell of ``grid`` into ``out`` (see module doc).

    ``grid``: ``"eps=...;seed=..."`` or (eps values, seeds). ``images``: ``correct`` (test
    images every cell classifies correctly, the paper's rule) or ``all``. ``retries``: extra
    attempts of a failed cell. ``ray_address``: run the training as Ray tasks (``auto``, an
    address, or ``local`` for a fresh local instance); ``ray_cpus``/``ray_gpus``: each task's
    request (GPUs default to 1 when the cluster has GPUs and the config's device is not cpu).
    ``figures``: draw the sweep's figures (the tables are always written).
    """
    from robsal.utils import resolve_device

    if images not in ("correct", "all"):
        raise ConfigError(f"--images must be 'correct' or 'all', got {images!r}")
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    eps_values, seeds = parse_grid(grid, cfg.seed) if isinstance(grid, str) else (
        sorted(float(e) for e in grid[0]), sorted(int(s) for s in grid[1]))
    cells = make_cells(eps_values, seeds)
    scfg = sweep_config(cfg, cells)
    out = Path(out)
    t_all = time.perf_counter()
    with RunLock(out):
        _init_sweep(scfg, out)
        dev = resolve_device(device or scfg.device)
        from robsal.data import prepare

        data = prepare(scfg, out, progress=progress)
        if scfg.tune.enabled:
            fp = fingerprint(scfg, "data", "model", "train", "tune")
            if not is_done(out, "tune", fp):
                from robsal.training import tune

                _say("tuning hyper-parameters once for all cells (standard training, CV)")
                tune(scfg, out, data, device=dev, progress=progress)
                mark_done(out, "tune", fp=fp)

        statuses = {c.name: CellStatus(c.name, c.eps, c.seed) for c in cells}
        pending = []
        for c in cells:
            if cell_complete(scfg, out, c):
                statuses[c.name].state = "done"
            else:
                pending.append(c)
        _say(f"sweep: {len(cells)} cells, {len(cells) - len(pending)} finished earlier, {len(pending)} to train")
        _write_status(out, statuses)
        if pending:
            if ray_address:
                _train_ray(scfg, out, data, pending, statuses, address=ray_address, cpus=ray_cpus, gpus=ray_gpus,
                           retries=retries, progress=progress)
            else:
                _train_local(scfg, out, data, pending, statuses, device=dev, progress=progress, retries=retries)
        ok = [c for c in cells if statuses[c.name].ok]
        if not ok:
            return SweepResult(out, statuses, None, None)

        names = [c.name for c in ok]
        for c in cells:  # maps of a cell that is not trained (any more) must not enter the metrics
            stale = out / "saliency" / c.name
            if c.name not in names and stale.is_dir():
                shutil.rmtree(stale)
        fp_explain = _stage_fp(scfg, TRAIN_SECTIONS + ("saliency",), names, images)
        if not is_done(out, "sweep_explain", fp_explain):
            from robsal.saliency import explain_run

            _say(f"saliency maps of {len(ok)} cell(s) ...")
            t0 = time.perf_counter()
            ids = any_images(data, scfg.saliency.n_per_class, scfg.seed) if images == "all" else None
            try:
                explain_run(out, models=names, image_ids=ids, device=dev, progress=progress, data=data, figures=False)
            except DataError as exc:
                if images == "all":
                    raise
                raise DataError(f"{exc}; or choose the images regardless of correctness: --images all") from None
            mark_done(out, "sweep_explain", seconds=round(time.perf_counter() - t0, 2), fp=fp_explain)
        fp_eval = _stage_fp(scfg, TRAIN_SECTIONS + ("saliency", "metrics"), names, images)
        if not is_done(out, "sweep_evaluate", fp_eval):
            from robsal.metrics import evaluate_run

            _say("metrics and statistics ...")
            t0 = time.perf_counter()
            evaluate_run(out, data=data, device=dev, progress=progress)
            mark_done(out, "sweep_evaluate", seconds=round(time.perf_counter() - t0, 2), fp=fp_eval)
        table, result = aggregate(out, data=data, optimum=optimum, figure_method=figure_method, figures=figures)
    _say(f"sweep finished in {time.perf_counter() - t_all:.1f} s; table: {out / SWEEP_SUBDIR / 'table.csv'}")
    return SweepResult(out, statuses, table, result)
