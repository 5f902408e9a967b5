"""Standard fine-tuning of some layer groups of a robust model (paper Appendix D, Figures 12-13).

The paper asks whether a robust model's accuracy can be raised while keeping its clearer
saliency maps, by making only the first layers robust: take a robust model, freeze every
layer, unfreeze some groups "starting from the last one", and fine-tune them with
*standard* training at a small learning rate (1e-5) with early stopping. ResNet-18 has
five groups (:data:`robsal.models.build.RESNET_GROUPS`: 1 = stem + layer1, 2 = layer2,
3 = layer3, 4 = layer4, 5 = fc); the paper's variants are groups 5, 4-5, 3-5 and 2-5.

Procedure (Appendix A, "for the fine-tuning experiment"):

* Adam with the run's betas and weight decay, only the unfrozen parameters; batch size
  ``train.phase2.batch_size``; the run's augmentation; standard (clean) training on the
  train split.
* After every epoch, the mean cross-entropy on the validation split (paper: 150 images
  held out of the test set, ``data.val_per_class = 50``). An epoch *improves* when the
  loss is strictly below the best so far. The learning rate is multiplied by 0.1 each
  time 5 epochs in a row have not improved, and training stops after 10 such epochs (or
  ``max_epochs``). The weights of the best epoch are kept.
* BatchNorm layers whose parameters are frozen stay in eval mode: they normalise with
  the robust model's running statistics and do not change them
  (``train_epoch(frozen_bn_eval=True)``). The original code left every BatchNorm layer in
  train mode, so the statistics of "frozen" layers drifted towards the standard-training
  data; here a frozen group is exactly the robust model's group.

Output: each variant as ``RUN/models/<from>_ft<groups>/`` (``model.safetensors``,
``model.json`` with ``metrics``, ``finetuned_from`` and ``finetune``, ``history.jsonl``),
like every other model of the run; ``RUN/finetune/accuracy.csv|json`` and
``RUN/figures/finetune_accuracy.png|pdf`` (Figure 13: standard, each variant, robust);
``RUN/finetune/saliency/<model>/gradient.npz`` and ``RUN/figures/finetune_gradient.png|pdf``
(Figure 12: Gradient maps, same images for every model). ``RUN/saliency`` is left as it
is; ``robsal explain --run RUN --models ...`` then ``robsal evaluate`` add the variants
to the run's metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from robsal.config import Config, load_run_config
from robsal.errors import CheckpointError, ConfigError, DataError
from robsal.io import append_jsonl, atomic_open, read_json, write_json

N_GROUPS = 5
TRAIN_ACCURACY_IMAGES = 256  # clean train accuracy per epoch on this many train images (as in training.fit)
KEEP_META = ("arch", "classes", "mean", "std", "image_size", "pretrained")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class FinetuneSettings:
    """Appendix D: lr 1e-5, early stopping after 10 epochs without val-loss improvement,
    lr x0.1 after 5."""

    lr: float = 1e-5
    patience: int = 10
    lr_patience: int = 5
    lr_factor: float = 0.1
    max_epochs: int = 100
    batch_size: int | None = None  # None: the run's train.phase2.batch_size

    def check(self, cli: bool = False) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.lr > 0 if cli else self.lr >= 0, f"--lr must be > 0, got {self.lr:g}")
        need(self.patience >= 1, f"--patience must be >= 1, got {self.patience}")
        need(self.lr_patience >= 1, f"--lr-patience must be >= 1, got {self.lr_patience}")
        need(0 < self.lr_factor <= 1, f"lr factor must lie in (0, 1], got {self.lr_factor:g}")
        need(self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}")
        need(self.batch_size is None or self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- groups


def parse_groups(text: str) -> list[tuple[int, ...]]:
    """``"5,4-5,3-5"`` -> [(5,), (4, 5), (3, 4, 5)]; each item a group or a range ``a-b``."""
    variants: list[tuple[int, ...]] = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        try:
            if "-" in item:
                a, b = (int(v) for v in item.split("-"))
            else:
                a = b = int(item)
        except ValueError:
            raise ConfigError(f"--groups: {item!r} is not a group (1-{N_GROUPS}) or a range like 3-5") from None
        if not 1 <= a <= b <= N_GROUPS:
            raise ConfigError(f"--groups: {item!r} must name groups between 1 and {N_GROUPS}, low to high")
        g = tuple(range(a, b + 1))
        if g in variants:
            raise ConfigError(f"--groups: {item!r} is listed twice")
        variants.append(g)
    if not variants:
        raise ConfigError("--groups names no group; e.g. --groups 5,4-5,3-5,2-5")
    return variants


def variant_label(groups: Sequence[int]) -> str:
    groups = sorted(groups)
    return str(groups[0]) if len(groups) == 1 else f"{groups[0]}-{groups[-1]}"


def variant_name(source: str, groups: Sequence[int]) -> str:
    return f"{source}_ft{variant_label(groups)}"


def freeze_to_groups(model: nn.Module, groups: Sequence[int]) -> list[nn.Parameter]:
    """Freeze every parameter, then unfreeze those of ``groups``; returns the trainable ones."""
    from robsal.models import group_parameters

    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for _, p in group_parameters(model, list(groups))]
    for p in params:
        p.requires_grad_(True)
    return params


# --------------------------------------------------------------------------- early stopping


class Plateau:
    """Early stopping and lr decay on a validation loss (Appendix A).

    :meth:`step` returns ``improved`` (strictly below the best so far), ``reduce_lr``
    (every ``lr_patience``-th epoch in a row without improvement), ``stop`` (the
    ``patience``-th) or ``wait``. With patience 10 and lr_patience 5: lr x0.1 after 5
    epochs without improvement, stop after 10. A NaN loss never improves.
    """

    def __init__(self, patience: int = 10, lr_patience: int = 5) -> None:
        self.patience, self.lr_patience = patience, lr_patience
        self.best = float("inf")
        self.bad = 0

    def step(self, loss: float) -> str:
        if loss < self.best:
            self.best, self.bad = float(loss), 0
            return "improved"
        self.bad += 1
        if self.bad >= self.patience:
            return "stop"
        if self.bad % self.lr_patience == 0:
            return "reduce_lr"
        return "wait"


@torch.no_grad()
def mean_loss(model: nn.Module, data: Any, idx: np.ndarray, *, device: torch.device, batch_size: int = 128) -> float:
    """Mean cross-entropy on the rows ``idx`` (eval mode; the model's mode is restored)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(idx), batch_size):
        x, y = data.batch(idx[s : s + batch_size], device)
        total += float(F.cross_entropy(model(x).float(), y, reduction="sum"))
        n += len(y)
    model.train(was)
    return total / max(n, 1)


def finetune_model(
    model: nn.Module,
    data: Any,
    cfg: Config,
    groups: Sequence[int],
    settings: FinetuneSettings,
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
    name: str = "",
    history_path: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fine-tune ``groups`` of ``model`` in place (see module doc); returns (history, summary).

    The model ends with the weights of its best epoch (lowest validation loss), in eval mode.
    """
    from robsal.training import accuracy
    from robsal.training.loop import make_augment, train_epoch

    settings.check()
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if len(train_idx) == 0:
        raise DataError("the run has no training images; check data.train_per_class and splits.csv")
    if len(val_idx) == 0:
        raise DataError(
            "fine-tuning needs a validation split for early stopping; this run has none "
            "(set data.val_per_class > 0, paper: 50, in a new run)"
        )
    params = freeze_to_groups(model, groups)
    b1, b2 = cfg.train.betas
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(float(b1), float(b2)), weight_decay=cfg.train.weight_decay)
    augment = make_augment(cfg.augment)
    bs = settings.batch_size or cfg.train.phase2.batch_size
    ebs = cfg.train.eval_batch_size
    rng = np.random.default_rng(seed)
    train_eval_idx = np.sort(rng.choice(train_idx, size=min(TRAIN_ACCURACY_IMAGES, len(train_idx)), replace=False))
    plateau = Plateau(settings.patience, settings.lr_patience)
    start_loss = mean_loss(model, data, val_idx, device=device, batch_size=ebs)
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, stopped = 0, "max_epochs"
    history: list[dict[str, Any]] = []
    for epoch in range(1, settings.max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(
            model, data, train_idx, optimizer, batch_size=bs, seed=seed, epoch=epoch, device=device,
            adversary=None, augment=augment, amp=cfg.train.amp, progress=progress,
            desc=f"{name} {epoch}".strip(), frozen_bn_eval=True,
        )
        val_loss = mean_loss(model, data, val_idx, device=device, batch_size=ebs)
        event = plateau.step(val_loss)
        if event == "improved":
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
        elif event == "reduce_lr":
            for g in optimizer.param_groups:
                g["lr"] *= settings.lr_factor
        rec = {
            "epoch": epoch,
            "phase": "finetune",
            "lr": lr,
            "batch_size": bs,
            "train_loss": stats["train_loss"],
            "train_accuracy": accuracy(model, data, train_eval_idx, device=device, batch_size=ebs),
            "val_loss": val_loss,
            "val_accuracy": accuracy(model, data, val_idx, device=device, batch_size=ebs),
            "event": event,
            "epoch_seconds": stats["epoch_seconds"],
            "images_per_second": stats["images_per_second"],
        }
        history.append(rec)
        if history_path is not None:
            append_jsonl(history_path, rec)
        if progress:
            print(f"{name} epoch {epoch}: train_loss={rec['train_loss']:.4f}, val_loss={val_loss:.4f}, "
                  f"val_accuracy={rec['val_accuracy']:.3f} ({event})", flush=True)
        if event == "stop":
            stopped = "early"
            break
    model.load_state_dict(best_state)
    for p in model.parameters():  # leave the model fully trainable, as a loaded model is
        p.requires_grad_(True)
    model.eval()
    summary = {
        "groups": list(groups),
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": plateau.best,
        "val_loss_before": start_loss,
        "stopped": stopped,
        "batch_size": bs,
        "frozen_bn_eval": True,
        **{k: v for k, v in asdict(settings).items() if k != "batch_size"},
    }
    return history, summary


# --------------------------------------------------------------------------- the command


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def finetune_fingerprint(cfg: Config, source_digest: str, groups: Sequence[int], settings: FinetuneSettings) -> str:
    d = cfg.to_dict()
    part = {k: d[k] for k in ("seed", "data", "augment", "train", "robustness", "adversary")}
    part.update({"source": source_digest, "groups": list(groups), "settings": asdict(settings)})
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _complete(model_dir: Path, fp: str) -> bool:
    path = model_dir / "model.json"
    if not path.exists() or not (model_dir / "model.safetensors").exists():
        return False
    try:
        meta = read_json(path)
    except json.JSONDecodeError:
        return False
    return meta.get("fingerprint") == fp and "metrics" in meta


def find_standard(run_dir: Path, exclude: Sequence[str] = ()) -> str | None:
    """The run's standard model: ``standard`` if it has eps 0, else the first eps-0 model by name."""
    names = []
    for meta_path in sorted((run_dir / "models").glob("*/model.json")):
        name = meta_path.parent.name
        if name in exclude:
            continue
        try:
            meta = read_json(meta_path)
        except json.JSONDecodeError:
            continue
        if float(meta.get("eps", -1)) == 0 and not meta.get("finetuned_from"):
            names.append(name)
    return "standard" if "standard" in names else (names[0] if names else None)


@dataclass
class FinetuneResult:
    run_dir: Path
    source: str
    standard: str | None
    variants: dict[str, dict[str, Any]]  # name -> finetune summary
    table: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    not_comparable: list[str] = field(default_factory=list)  # competence-gate reasons (empty: comparable)

    def lines(self) -> list[str]:
        out = []
        for _, r in self.table.iterrows():
            extra = f" ({int(r['epochs'])} epochs, best {int(r['best_epoch'])}, stopped: {r['stopped']})" \
                if r["role"] == "fine-tuned" else ""
            out.append(f"{r['model']}: clean {r['clean_accuracy']:.1%}, balanced {r['balanced_accuracy']:.1%}{extra}")
        if self.not_comparable:
            out.append(f"saliency comparison not comparable: {'; '.join(self.not_comparable)}")
        return out


def run_finetune(
    run_dir: str | Path,
    source: str,
    variants: Sequence[Sequence[int]],
    *,
    settings: FinetuneSettings | None = None,
    standard: str | None = None,
    images: str = "correct",
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    figures: bool = True,
) -> FinetuneResult:
    """Fine-tune each group variant of the model ``source`` of ``run_dir``; write models,
    tables and Figures 12-13 (see module doc). Complete variants are skipped unless ``force``."""
    from robsal.models import load, save
    from robsal.runs import RunLock
    from robsal.training import evaluate_model
    from robsal.utils import git_commit, resolve_device

    settings = settings or FinetuneSettings()
    settings.check()
    if images not in ("correct", "all"):
        raise ConfigError(f"--images must be 'correct' or 'all', got {images!r}")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    src_dir = run_dir / "models" / source
    if not (src_dir / "model.json").exists() or not (src_dir / "model.safetensors").exists():
        found = sorted(p.parent.name for p in (run_dir / "models").glob("*/model.json"))
        raise CheckpointError(
            f"model {source!r} is not in {run_dir / 'models'} (found: {', '.join(found) or 'none'}); "
            "train it first or pass one of those to --from"
        )
    dev = resolve_device(device if device is not None else cfg.device)
    with RunLock(run_dir):
        from robsal.data import load_run_data

        data = load_run_data(run_dir)
        src_meta = read_json(src_dir / "model.json")
        if float(src_meta.get("eps", 0)) == 0:
            _say(f"robsal: warning: {source} has eps 0 (a standard model); Appendix D fine-tunes a robust one")
        digest = _file_digest(src_dir / "model.safetensors")
        seed = int(cfg.seed if src_meta.get("seed") is None else src_meta["seed"])
        done: dict[str, dict[str, Any]] = {}
        for groups in variants:
            name = variant_name(source, groups)
            model_dir = run_dir / "models" / name
            fp = finetune_fingerprint(cfg, digest, groups, settings)
            if not force and _complete(model_dir, fp):
                _say(f"{name}: already fine-tuned, skipping")
                done[name] = read_json(model_dir / "model.json")["finetune"]
                continue
            _say(f"{name}: fine-tuning groups {variant_label(groups)} of {source} (lr {settings.lr:g})")
            model = load(src_dir, dev)
            model_dir.mkdir(parents=True, exist_ok=True)
            history_path = model_dir / "history.jsonl"
            if history_path.exists():
                history_path.unlink()
            t0 = time.perf_counter()
            _, summary = finetune_model(
                model, data, cfg, groups, settings, seed=seed, device=dev, progress=progress, name=name,
                history_path=history_path,
            )
            seconds = time.perf_counter() - t0
            metrics = evaluate_model(model, data, cfg, device=dev, progress=progress, desc=name)
            model.meta = {k: model.meta[k] for k in KEEP_META if k in model.meta}
            save(
                model, model_dir,
                name=name,
                eps=float(src_meta.get("eps", 0.0)),
                eps_l2=float(src_meta.get("eps_l2", 0.0)),
                adversary=None,
                seed=seed,
                finetuned_from={
                    "name": source, "eps": src_meta.get("eps"), "fingerprint": src_meta.get("fingerprint"),
                    "weights_sha256_16": digest,
                },
                finetune=summary,
                config=cfg.to_dict(),
                commit=git_commit(),
                fingerprint=fp,
                train_seconds=seconds,
                epochs=summary["epochs"],
                metrics=metrics,
            )
            done[name] = summary
            _say(f"{name}: {summary['epochs']} epochs ({summary['stopped']}), best epoch {summary['best_epoch']}, "
                 f"clean accuracy {metrics['clean_accuracy']:.1%}")
        std = standard or find_standard(run_dir, exclude=[source, *done])
        if std is not None and not (run_dir / "models" / std / "model.json").exists():
            raise CheckpointError(f"--standard {std!r} is not in {run_dir / 'models'}")
        table = accuracy_table(run_dir, source, std, list(done), done)
        out_dir = run_dir / "finetune"
        with atomic_open(out_dir / "accuracy.csv", "w", encoding="utf-8", newline="") as fh:
            table.to_csv(fh, index=False, float_format="%.6g")
        from robsal.metrics import gate as competence

        # the maps of Figure 12 compare these models: only competent ones are comparable
        model_metrics = {n: (read_json(run_dir / "models" / n / "model.json").get("metrics") or {})
                         for n in table["model"]}
        gate = competence.check(model_metrics, list(data.classes), None, min_recall=cfg.metrics.min_recall)
        write_json(out_dir / "accuracy.json", {
            "source": source, "standard": std, "settings": asdict(settings),
            "comparable": gate.comparable, "gate": gate.to_dict(),
            "rows": json.loads(table.to_json(orient="records")),
            "note": "frozen BatchNorm layers stay in eval mode (the original code let their statistics drift)",
        })
        paths: list[Path] = []
        if figures:
            paths += accuracy_figure(table, run_dir / "figures" / "finetune_accuracy")
            paths += saliency_figure(run_dir, cfg, data, list(table["model"]), images=images, device=dev,
                                     progress=progress, not_comparable=None if gate.comparable else gate.reason)
    return FinetuneResult(run_dir, source, std, done, table, paths, gate.reasons)


def _order(variants: Sequence[str], info: dict[str, dict[str, Any]]) -> list[str]:
    """Most groups fine-tuned first (closest to the standard model), as in Figures 12-13."""
    return sorted(variants, key=lambda n: (-len(info[n]["groups"]), n))


def accuracy_table(
    run_dir: Path, source: str, standard: str | None, variants: Sequence[str], info: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """Figure 13's numbers: standard, the variants (most groups first), the robust model."""
    rows = []
    order = ([standard] if standard else []) + _order(variants, info) + [source]
    for name in order:
        meta = read_json(run_dir / "models" / name / "model.json")
        m = meta.get("metrics") or {}
        role = "standard" if name == standard else ("robust" if name == source else "fine-tuned")
        ft = info.get(name, {})
        row = {
            "model": name,
            "role": role,
            "groups": variant_label(ft["groups"]) if ft else "",
            "eps": meta.get("eps"),
            "clean_accuracy": m.get("clean_accuracy"),
            "balanced_accuracy": m.get("balanced_accuracy"),
            "epochs": ft.get("epochs", meta.get("epochs")),
            "best_epoch": ft.get("best_epoch"),
            "stopped": ft.get("stopped", ""),
        }
        for c, v in (m.get("per_class_accuracy") or {}).items():  # test recall per class (competence gate)
            row[f"recall_{c}"] = v
        for k, v in sorted((m.get("robust_accuracy") or {}).items(), key=lambda kv: float(kv[0])):
            row[f"robust_accuracy@{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_figure(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Figure 13: clean and balanced test accuracy of standard, fine-tuned and robust models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robsal.saliency.figures import save_figure

    labels = [
        "standard" if r["role"] == "standard" else (f"ft {r['groups']}" if r["role"] == "fine-tuned" else r["model"])
        for _, r in table.iterrows()
    ]
    pos = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(1.4 + 1.0 * len(table), 3.2))
    for k, (col, lab) in enumerate((("clean_accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))):
        vals = table[col].astype(float).to_numpy()
        bars = ax.bar(pos + (k - 0.5) * 0.38, vals, width=0.38, label=lab)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.1%}", ha="center", fontsize=6)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("standard fine-tuning of layer groups of a robust model (Figure 13)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, stem)


def saliency_figure(
    run_dir: Path, cfg: Config, data: Any, names: Sequence[str], *, images: str, device: torch.device,
    progress: bool = True, not_comparable: str | None = None,
) -> list[Path]:
    """Figure 12: Gradient maps of the given models (standard, variants, robust) on the same images.

    ``not_comparable``: the competence gate's reasons when some model fails it; the title says so."""
    from robsal.models import load
    from robsal.saliency import select_images
    from robsal.saliency.figures import method_grid
    from robsal.saliency.run import compute_maps

    models = {n: load(run_dir / "models" / n, device) for n in names}
    k = cfg.saliency.n_per_class
    if images == "all":
        from robsal.experiments.sweep import any_images

        rows = data.rows_of(any_images(data, k, cfg.seed))
    else:
        try:
            rows = select_images(data, models, k, cfg.seed, device, cfg.train.eval_batch_size)
        except DataError as exc:
            raise DataError(f"{exc}; or use --images all") from None
    _, raw = compute_maps(run_dir / "finetune", models, data, rows, ["gradient"], cfg,
                          target=cfg.saliency.target, device=device, progress=progress)
    from robsal.experiments.sweep import _spread

    show = _spread(data.labels[rows], cfg.saliency.figure_images)
    ids = [data.image_ids[r] for r in rows]
    return method_grid(
        np.asarray(data.images[rows[show]]),
        {n: raw["gradient"][n][show] for n in names},
        run_dir / "figures" / "finetune_gradient",
        title="Gradient maps: standard, robust model with layer groups fine-tuned, robust (Figure 12)"
        + (f"\nNOT COMPARABLE: {not_comparable}" if not_comparable else ""),
        row_labels=[f"{ids[i]} ({data.classes[data.labels[rows[i]]]})" for i in show],
        normalisation=cfg.saliency.reduction,
    )
