"""``explain_run``: saliency maps of every model and method of a run, plus figures.

Reads ``RUN/config.yaml`` (section ``saliency``), ``RUN/models/<name>/`` and the run's
data; writes, for every model and method,

    RUN/saliency/<model>/<method>.npz
        maps         float32 (N, H, W)  channel-reduced map (``saliency.reduction``;
                                        default: sum over RGB of |attribution|),
                                        before any capping; Grad-CAM: the upsampled,
                                        ReLU'd CAM; occlusion: the averaged drop of
                                        the target probability (one channel, not
                                        summed over RGB)
        image_ids    str (N,)           the same images, in the same order, for every
                                        model and method of the run
        targets      int64 (N,)         the class explained
        predictions  int64 (N,)         the model's prediction
        labels       int64 (N,)         the true class
        method, model, reduction        0-d strings

and the figures ``RUN/figures/saliency_<method>.{png,pdf}`` (Figure 1/5 style) and
``RUN/figures/saliency_image_<image_id>.{png,pdf}`` (Figures 6-8 style). Saliency
files of an earlier call that explain another image list are deleted, so that every
file of the run explains the same images.

Random draws per image: the random methods (IG with uniform/Gaussian baselines,
SmoothGrad) draw image i's baselines / noise from a generator seeded with
``image_seed(cfg.seed, image_id)`` (:mod:`robsal.saliency.seeds`), so a saved map is the
same whatever ``saliency.batch_size``, the order of the images or the other images
selected. ``saliency.ig_baselines`` (default 1, as the paper) averages IG over that
many random baselines per image.

Image selection (paper Section 2: "all showcased saliency maps are computed on
correctly-classified images"): test images classified correctly by *every* model,
``n_per_class`` per class drawn with the run's seed; or explicit ``image_ids``.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from robsal.config import Config, load_run_config
from robsal.data import load_run_data
from robsal.errors import CheckpointError, DataError
from robsal.io import load_npz, save_npz
from robsal.models import load
from robsal.rundir import Selection, record_figure, writes_run
from robsal.saliency.figures import image_grid, method_grid
from robsal.saliency.methods import explain, get_method, predicted
from robsal.saliency.seeds import image_seeds
from robsal.saliency.visualize import reduce_channels
from robsal.utils import resolve_device


def method_options(cfg: Config, method: str, image_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The options ``explain`` gets for ``method`` from the ``saliency`` config section.

    ``seed`` of a random method: with ``image_ids``, the per-image seeds
    ``image_seed(cfg.seed, id)`` of those images (what :func:`compute_maps` uses);
    without, ``cfg.seed`` (``explain`` then derives the seed of each position)."""
    s = cfg.saliency
    seed: Any = cfg.seed if image_ids is None else image_seeds(cfg.seed, [str(i) for i in image_ids])
    if method.startswith("integrated_gradients"):
        return {"n_steps": s.ig_steps, "n_baselines": s.ig_baselines, "seed": seed}
    if method.startswith("smoothgrad"):
        return {"n_samples": s.smoothgrad_samples, "noise": s.smoothgrad_noise, "seed": seed}
    if method == "gradcam" and getattr(s, "gradcam_layer", None):
        return {"layer": s.gradcam_layer}
    return {}


def _show_progress(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


def select_images(
    data: Any,
    models: dict[str, torch.nn.Module],
    n_per_class: int,
    seed: int,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Row indices of test images correct for every model, ``n_per_class`` per class.

    Classes in ``data.classes`` order; within a class, a seeded random draw kept in
    row order (the paper shows correctly classified images only). A class with fewer
    correct images gives what it has, with a warning that names it (e.g. a robust
    model that never predicts that class): the maps and metrics then under-represent
    it, and ``RUN/saliency/selection.json`` records the counts for the report. No
    image at all is a DataError.
    """
    test = data.indices("test")
    if len(test) == 0:
        raise DataError("the run has no test images to explain; check RUN/splits.csv")
    ok = np.ones(len(test), dtype=bool)
    for model in models.values():
        preds = []
        for i in range(0, len(test), batch_size):
            x, _ = data.batch(test[i : i + batch_size], device)
            preds.append(predicted(model, x).cpu().numpy())
        ok &= np.concatenate(preds) == data.labels[test]
    rng = np.random.default_rng(seed)
    chosen = []
    for k, cls in enumerate(data.classes):
        rows = test[ok & (data.labels[test] == k)]
        if len(rows) > n_per_class:
            rows = np.sort(rng.choice(rows, n_per_class, replace=False))
        elif len(rows) < n_per_class:
            warnings.warn(
                f"class {cls!r}: only {len(rows)} of the {n_per_class} requested test images are classified "
                f"correctly by every model ({', '.join(models)}); its maps and metrics are under-represented",
                stacklevel=2,
            )
        chosen.append(rows)
    out = np.concatenate(chosen).astype(np.int64)
    if len(out) == 0:
        raise DataError(
            f"no test image is classified correctly by every model ({', '.join(models)}); "
            "train longer or pass image ids explicitly (--images)"
        )
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@writes_run
def explain_run(
    run_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    n_per_class: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: Any = None,
    figures: bool = True,
) -> dict[str, dict[str, Path]]:
    """Compute and save the maps of ``models`` x ``methods`` (defaults: the config's).

    ``data``: the run's :class:`~robsal.data.PreparedData`; None loads it with
    ``robsal.data.load_run_data(run_dir)``. Returns model -> method -> npz path.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    dev = resolve_device(device if device is not None else cfg.device)
    names = list(models) if models else [m.name for m in cfg.models]
    method_names = list(methods) if methods else list(cfg.saliency.methods)
    for m in method_names:
        get_method(m)  # an unknown name is a ConfigError before any work
    loaded = {}
    for name in names:
        mdir = run_dir / "models" / name
        if not (mdir / "model.json").exists():
            raise CheckpointError(f"model {name!r} is missing from {run_dir / 'models'}; run `robsal train` first")
        loaded[name] = load(mdir, dev)
    if data is None:
        data = load_run_data(run_dir)

    if image_ids:
        rows = data.rows_of(list(image_ids))
        selection = Selection(rule="image ids given", models=names, n_per_class=None)
    else:
        k = n_per_class if n_per_class is not None else cfg.saliency.n_per_class
        rows = select_images(data, loaded, k, cfg.seed, dev, cfg.train.eval_batch_size)
        selection = Selection(rule=Selection.CORRECT, models=names, n_per_class=k)
    counts = np.bincount(data.labels[rows], minlength=len(data.classes))
    selection.selected = {c: int(n) for c, n in zip(data.classes, counts)}
    selection.save(run_dir / "saliency" / "selection.json")
    out, raw = compute_maps(
        run_dir, loaded, data, rows, method_names, cfg, target=cfg.saliency.target, device=dev, progress=progress
    )

    _drop_stale(run_dir, out, ids=[data.image_ids[r] for r in rows])
    if figures:
        write_figures(run_dir, data, rows, raw, cfg)
    return out


def _drop_stale(run_dir: Path, written: dict[str, dict[str, Path]], ids: list[str]) -> list[Path]:
    """Delete saliency files of earlier calls that explain another image list.

    Every ``.npz`` of a run must explain the same images in the same order (the
    metrics and the report pair them up); a file left from an earlier selection
    (other ``--images`` / ``--n-per-class``) would break that, so it goes.
    """
    keep = {p.resolve() for per in written.values() for p in per.values()}
    dropped = []
    for path in sorted((run_dir / "saliency").glob("*/*.npz")):
        if path.resolve() in keep:
            continue
        try:
            old = load_npz(path).get("image_ids")
        except (OSError, ValueError):
            old = None
        if old is None or old.astype(str).tolist() != list(ids):
            path.unlink()
            dropped.append(path)
    return dropped


def compute_maps(
    out_dir: Path,
    models: dict[str, torch.nn.Module],
    data: Any,
    rows: np.ndarray,
    methods: Sequence[str],
    cfg: Config,
    *,
    target: str | int = "label",
    device: torch.device,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Path]], dict[str, dict[str, np.ndarray]]]:
    """Explain ``data`` rows with every model x method; write ``out_dir/saliency/...npz``.

    ``target``: ``label`` (true class), ``prediction`` (each model's own prediction) or
    a class index. Returns (model -> method -> npz path, method -> model -> maps).
    Random methods are seeded per image from (``cfg.seed``, image id): a row's map does
    not depend on the other rows nor on ``cfg.saliency.batch_size``.
    """
    ids = np.asarray([data.image_ids[r] for r in rows], dtype=str)
    labels = data.labels[rows].astype(np.int64)
    out: dict[str, dict[str, Path]] = {}
    raw: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}  # method -> model -> (N, H, W)
    bs = cfg.saliency.batch_size
    jobs = [(n, m) for n in models for m in methods]
    # each model's predictions, once: (N,) int64 on the device
    all_preds = {}
    for name, model in models.items():
        all_preds[name] = torch.cat(
            [predicted(model, data.batch(rows[i : i + bs], device)[0]) for i in range(0, len(rows), bs)]
        )
    bar = tqdm(jobs, desc="saliency", disable=not _show_progress(progress))
    for name, method in bar:
        bar.set_postfix_str(f"{name}/{method}")
        model = models[name]
        shared = get_method(method).channel_shared
        maps, preds, targets = [], [], []
        for i in range(0, len(rows), bs):
            x, y = data.batch(rows[i : i + bs], device)
            pred = all_preds[name][i : i + bs]
            if target == "label":
                t = y
            elif target == "prediction":
                t = pred
            else:
                t = torch.full_like(pred, int(target))
            # random draws seeded per image: (run seed, image id), not the batch position
            attr = explain(model, x, t, method, **method_options(cfg, method, ids[i : i + bs]))
            # (B, C, H, W) -> (B, H, W)
            maps.append(reduce_channels(attr, cfg.saliency.reduction, channel_shared=shared))
            preds.append(pred.cpu().numpy())
            targets.append(t.cpu().numpy())
        m = np.concatenate(maps).astype(np.float32)
        path = Path(out_dir) / "saliency" / name / f"{method}.npz"
        save_npz(
            path,
            maps=m,
            image_ids=ids,
            targets=np.concatenate(targets).astype(np.int64),
            predictions=np.concatenate(preds).astype(np.int64),
            labels=labels,
            method=np.asarray(method),
            model=np.asarray(name),
            reduction=np.asarray(cfg.saliency.reduction),
        )
        out.setdefault(name, {})[method] = path
        raw[method][name] = m
    return out, raw


def write_figures(
    run_dir: Path,
    data: Any,
    rows: np.ndarray,
    raw: dict[str, dict[str, np.ndarray]],
    cfg: Config,
) -> list[Path]:
    """Figure 1/5 grid per method and Figures 6-8 grid per image, for at most
    ``saliency.figure_images`` images (spread over the classes)."""
    ids = np.asarray([data.image_ids[r] for r in rows], dtype=str)
    labels = data.labels[rows].astype(np.int64)
    limit = int(getattr(cfg.saliency, "figure_images", 12))
    show = _spread(labels, limit)
    images = np.asarray(data.images[rows[show]])
    row_labels = [f"{ids[i]} ({_class_name(data.classes, labels[i])})" for i in show]
    fig_dir = run_dir / "figures"
    paths: list[Path] = []
    norm = cfg.saliency.reduction
    for method, per_model in raw.items():
        written = method_grid(
            images,
            {name: m[show] for name, m in per_model.items()},
            fig_dir / f"saliency_{method}",
            title=f"{method}",
            row_labels=row_labels,
            normalisation=norm,
        )
        _record(run_dir, written, f"{method}: every model's maps of the same images (Figure 1/5 style)")
        paths += written
    for j, i in enumerate(show):
        per = {method: {name: m[i] for name, m in per_model.items()} for method, per_model in raw.items()}
        written = image_grid(
            images[j],
            per,
            fig_dir / f"saliency_image_{_safe(str(ids[i]))}",
            title=f"{ids[i]} ({_class_name(data.classes, labels[i])})",
            normalisation=norm,
        )
        _record(run_dir, written, f"{ids[i]} ({_class_name(data.classes, labels[i])}): every method and model "
                "(Figures 6-8 style)")
        paths += written
    return paths


def _record(run_dir: Path, written: list[Path], caption: str) -> None:
    """Record the PNG of a figure in RUN/figures/index.json (the report's section of other figures)."""
    for path in written:
        if path.suffix == ".png":
            record_figure(run_dir, path, "figures", caption, producer="explain")


def _spread(labels: np.ndarray, limit: int) -> list[int]:
    """Up to ``limit`` positions, taking classes in turn (round robin)."""
    by_class: dict[int, list[int]] = {}
    for i, k in enumerate(labels):
        by_class.setdefault(int(k), []).append(i)
    out: list[int] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)


def _class_name(classes: Sequence[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else "unlabelled"
