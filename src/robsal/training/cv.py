"""``robsal tune``: k-fold cross-validated grid search with standard training (Appendix A).

The paper: "The fine-tuning hyperparameters were found using five fold
cross-validation on the training set, through a grid-search of learning rates of
1e-3, 3e-4, 1e-4 and mini-batch sizes of 8, 16, 32. We selected the
hyper-parameters providing the highest accuracy and trained the final model on
the entire training set."

For each held-out fold f (the ``fold`` column of ``RUN/splits.csv``): phase 1
(head only, ``train.phase1``) is trained once on the other folds and cached;
every grid cell (lr, batch size) then runs phase 2 from that state and is scored
by clean accuracy on fold f. Because data order and augmentation depend only on
(seed, epoch) (see :mod:`robsal.training.loop`), this equals training each cell
from scratch. Ties in mean accuracy go to the earlier cell of the grid.

Output: ``RUN/tune/cv_table.csv`` (one row per cell: lr, batch_size, mean_accuracy,
std_accuracy (sample std, ddof=1), n_folds, fold_<k> accuracies), ``RUN/tune/best.json``
(lr, batch_size, mean/std accuracy, the grid), ``RUN/tune/folds.jsonl`` (one line per
finished (cell, fold), used to resume an interrupted search). ``robsal train`` in the
same run directory then uses the chosen lr and batch size for phase 2 of every model.

Interrupted cells resume too: the fold's phase 1 and the running cell checkpoint every
epoch into ``RUN/tune/checkpoints/`` (:mod:`robsal.training.checkpoint`); a cell's
checkpoint is deleted once its line is in ``folds.jsonl``, the phase-1 one once the
fold's cells are done.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robsal.config import Config
from robsal.data import load_run_data, prepare
from robsal.errors import ConfigError, DataError
from robsal.io import append_jsonl, atomic_open, write_json
from robsal.models import build_model
from robsal.rundir import RunLock, fingerprint, read_folds
from robsal.training.checkpoint import remove_checkpoints
from robsal.training.evaluate import accuracy
from robsal.training.loop import make_augment
from robsal.training.plan import Phase, TrainPlan
from robsal.training.train import fit
from robsal.utils import resolve_device, seed_everything


def _folds(data, n: int) -> list[int]:
    train = data.splits[data.splits["split"] == "train"]
    folds = sorted(int(f) for f in pd.to_numeric(train["fold"], errors="coerce").dropna().unique())
    if len(folds) < n:
        raise DataError(
            f"tune.folds={n} but splits.csv has {len(folds)} folds in the train split; "
            f"set tune.folds<={len(folds)} or data.n_folds>={n}"
        )
    return folds[:n]


def tune(
    cfg: Config,
    run_dir: str | Path,
    data=None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the CV grid of ``cfg.tune``; write the table and ``best.json``; return the best cell."""
    run_dir = Path(run_dir)
    with RunLock(run_dir, reentrant=True):  # one writer of folds.jsonl and the checkpoints
        return _tune(cfg, run_dir, data, device=device, progress=progress)


def _tune(cfg: Config, run_dir: Path, data, *, device, progress: bool) -> dict[str, Any]:
    if data is None:
        data = load_run_data(run_dir) if (run_dir / "splits.csv").exists() else prepare(cfg, run_dir, progress=progress)
    dev = resolve_device(device if device is not None else cfg.device)
    out_dir = run_dir / "tune"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = [(float(lr), int(bs)) for lr in cfg.tune.lrs for bs in cfg.tune.batch_sizes]
    if not grid:
        raise ConfigError("tune.lrs and tune.batch_sizes must each list at least one value")
    folds = _folds(data, cfg.tune.folds)
    log_path = out_dir / "folds.jsonl"
    ckpt_root = out_dir / "checkpoints"
    done: dict[tuple[float, int, int], float] = read_folds(log_path) if log_path.exists() else {}
    augment = make_augment(cfg.augment)
    p1 = cfg.train.phase1
    for fold in folds:
        todo = [(lr, bs) for lr, bs in grid if (lr, bs, fold) not in done]
        if not todo:
            continue
        tr, va = _fold_indices(data, fold)
        if len(tr) == 0 or len(va) == 0:
            raise DataError(f"fold {fold} leaves no training or no held-out images; check splits.csv")
        seed_everything(cfg.seed)
        model = build_model(
            cfg.model.arch, data.classes, pretrained=cfg.model.pretrained, pretrained_path=cfg.model.pretrained_path,
            mean=cfg.model.mean, std=cfg.model.std, image_size=data.image_size,
        ).to(dev)
        fold_plan = TrainPlan.from_config(cfg, [], tr, seed=cfg.seed, device=dev, augment=augment, progress=progress)
        p1_dir = ckpt_root / f"fold{fold}_phase1"
        fit(model, data, fold_plan.replace(
            phases=(Phase("phase1", p1),), name=f"fold {fold} phase1", checkpoint_dir=p1_dir,
            fingerprint=fingerprint(cfg, "cv_cell", cell={"fold": fold, "phase": "phase1"})))
        state = copy.deepcopy(model.state_dict())
        for lr, bs in todo:
            model.load_state_dict(state)
            phase2 = _replace(cfg.train.phase2, lr, bs)
            start = time.perf_counter()
            cell_dir = ckpt_root / f"fold{fold}_lr{lr:g}_bs{bs}"
            fit(model, data, fold_plan.replace(
                phases=(Phase("phase2", phase2),), start_epoch=p1.epochs, name=f"fold {fold} lr={lr:g} bs={bs}",
                checkpoint_dir=cell_dir, fingerprint=fingerprint(cfg, "cv_cell", cell={"fold": fold, "lr": lr, "batch_size": bs})))
            acc = accuracy(model, data, va, device=dev, batch_size=cfg.train.eval_batch_size)
            done[(lr, bs, fold)] = acc
            append_jsonl(log_path, {"lr": lr, "batch_size": bs, "fold": fold, "accuracy": acc,
                                    "seconds": time.perf_counter() - start})
            remove_checkpoints(cell_dir)
            if progress:
                print(f"fold {fold} lr={lr:g} batch_size={bs}: accuracy {acc:.3f}", flush=True)
        remove_checkpoints(p1_dir)
    if ckpt_root.is_dir() and not any(ckpt_root.iterdir()):
        ckpt_root.rmdir()
    table = cv_table(done, grid, folds)
    with atomic_open(out_dir / "cv_table.csv", "w", newline="") as fh:
        table.to_csv(fh, index=False)
    best_row = table.iloc[int(np.argmax(table["mean_accuracy"].to_numpy()))]  # first max = earlier cell
    best = {
        "lr": float(best_row["lr"]),
        "batch_size": int(best_row["batch_size"]),
        "mean_accuracy": float(best_row["mean_accuracy"]),
        "std_accuracy": float(best_row["std_accuracy"]),
        "folds": folds,
        "grid": {"lrs": list(cfg.tune.lrs), "batch_sizes": list(cfg.tune.batch_sizes)},
        "applies_to": "train.phase2.lr and train.phase2.batch_size of every model trained in this run",
    }
    write_json(out_dir / "best.json", best)
    return best


def _fold_indices(data, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of CV fold ``fold`` within the train split."""
    is_train = (data.splits["split"] == "train").to_numpy(copy=True)
    folds = pd.to_numeric(data.splits["fold"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.flatnonzero(is_train & (folds != fold)), np.flatnonzero(is_train & (folds == fold))


def _replace(phase, lr: float, bs: int):
    return dataclasses.replace(phase, lr=lr, batch_size=bs, lr_decay_epochs=list(phase.lr_decay_epochs))


def cv_table(done: dict[tuple[float, int, int], float], grid: list[tuple[float, int]], folds: list[int]) -> pd.DataFrame:
    """One row per grid cell: lr, batch_size, mean_accuracy, std_accuracy (ddof=1), n_folds, fold_k."""
    rows = []
    for lr, bs in grid:
        accs = np.array([done[(lr, bs, f)] for f in folds])
        row: dict[str, Any] = {
            "lr": lr,
            "batch_size": bs,
            "mean_accuracy": float(accs.mean()),
            "std_accuracy": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            "n_folds": len(folds),
        }
        row.update({f"fold_{f}": float(a) for f, a in zip(folds, accs)})
        rows.append(row)
    return pd.DataFrame(rows)
