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
  ``max_epochs``). The weights of the best epoch are kept. The epochs are those of
  :func:`robsal.training.train.fit` (one phase that trains the named groups), with the
  stop policy :class:`robsal.training.stopping.Plateau`.
* BatchNorm layers whose parameters are frozen stay in eval mode: they normalise with
  the robust model's running statistics and do not change them
  (``TrainPlan(frozen_bn_eval=True)``). The original code left every BatchNorm layer in
  train mode, so the statistics of "frozen" layers drifted towards the standard-training
  data; here a frozen group is exactly the robust model's group.

Output: each variant as ``RUN/models/<from>_ft<groups>/`` (``model.safetensors``,
``model.json`` with ``metrics``, ``finetuned_from`` and ``finetune``, ``history.jsonl``),
like every other model of the run; ``RUN/finetune/accuracy.csv|json`` and
``RUN/figures/finetune_accuracy.png|pdf`` (Figure 13: standard, each variant, robust);
``RUN/finetune/saliency/<model>/gradient.npz`` and ``RUN/figures/finetune_gradient.png|pdf``
(Figure 12: Gradient maps, same images for every model). ``RUN/saliency`` is left as it
is; ``robsal explain --run RUN --models ...`` then ``robsal evaluate`` add the variants
to the run's metrics. Tables and figures: :mod:`robsal.experiments.finetune_report`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robsal.config import Config, PhaseConfig, load_run_config
from robsal.data import load_run_data
from robsal.errors import CheckpointError, ConfigError, DataError
from robsal.experiments.finetune_report import variant_label, write_outputs
from robsal.models import load, save
from robsal.models.build import RESNET_GROUPS
from robsal.rundir import FinetuneInfo, ModelRecord, RecordError, RunLock, fingerprint, is_complete
from robsal.training import evaluate_model, fit
from robsal.training.evaluate import mean_loss
from robsal.training.loop import make_augment
from robsal.training.plan import Phase, TrainPlan, train_accuracy_subset
from robsal.training.stopping import Plateau
from robsal.utils import git_commit, resolve_device, say

__all__ = [
    "FinetuneResult", "FinetuneSettingError", "FinetuneSettings", "Plateau", "finetune_model", "parse_groups",
    "run_finetune", "variant_label", "variant_name",
]

KEEP_META = ("arch", "classes", "mean", "std", "image_size", "pretrained")


class FinetuneSettingError(ConfigError):
    """A fine-tuning setting (``setting``: a field of :class:`FinetuneSettings`, ``groups`` or
    ``images``) out of range; ``detail`` says what it must be and what it was."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"finetune {setting} {detail}")
        self.setting, self.detail = setting, detail


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

    def check(self, positive_lr: bool = False) -> None:
        """Every setting in range; ``positive_lr``: lr 0 (no update, for tests) is refused too."""

        def need(ok: bool, setting: str, detail: str) -> None:
            if not ok:
                raise FinetuneSettingError(setting, detail)

        need(self.lr > 0 if positive_lr else self.lr >= 0, "lr", f"must be {'>' if positive_lr else '>='} 0, "
             f"got {self.lr:g}")
        need(self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        need(self.lr_patience >= 1, "lr_patience", f"must be >= 1, got {self.lr_patience}")
        need(0 < self.lr_factor <= 1, "lr_factor", f"must lie in (0, 1], got {self.lr_factor:g}")
        need(self.max_epochs >= 1, "max_epochs", f"must be >= 1, got {self.max_epochs}")
        need(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- groups


def parse_groups(text: str) -> list[tuple[int, ...]]:
    """``"5,4-5,3-5"`` -> [(5,), (4, 5), (3, 4, 5)]; each item a group or a range ``a-b``."""
    n = len(RESNET_GROUPS)
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
            raise FinetuneSettingError("groups", f"{item!r} is not a group (1-{n}) or a range like 3-5") from None
        if not 1 <= a <= b <= n:
            raise FinetuneSettingError("groups", f"{item!r} must name groups between 1 and {n}, low to high")
        g = tuple(range(a, b + 1))
        if g in variants:
            raise FinetuneSettingError("groups", f"{item!r} is listed twice")
        variants.append(g)
    if not variants:
        raise FinetuneSettingError("groups", "names no group; e.g. 5,4-5,3-5,2-5")
    return variants


def variant_name(source: str, groups: Sequence[int]) -> str:
    return f"{source}_ft{variant_label(groups)}"


# --------------------------------------------------------------------------- one variant


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
    settings.check()
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if len(train_idx) == 0:
        raise DataError("the run has no training images; check data.train_per_class and splits.csv")
    if len(val_idx) == 0:
        raise DataError(
            "fine-tuning needs a validation split for early stopping; this run has none "
            "(set data.val_per_class > 0, paper: 50, in a new run)"
        )
    bs = settings.batch_size or cfg.train.phase2.batch_size
    phase = Phase("finetune", PhaseConfig(epochs=settings.max_epochs, batch_size=bs, lr=settings.lr),
                  trainable=tuple(groups), lr_key="finetune lr")
    plan = TrainPlan.from_config(
        cfg, [phase], train_idx, seed=seed, device=device, augment=make_augment(cfg.augment), frozen_bn_eval=True,
        val_idx=val_idx, train_eval_idx=train_accuracy_subset(train_idx, seed), name=name, progress=progress,
        history_path=history_path,
    )
    start_loss = mean_loss(model, data, val_idx, device=device, batch_size=plan.eval_batch_size)
    plateau = Plateau(settings.patience, settings.lr_patience, settings.lr_factor)
    history = fit(model, data, plan, stop=plateau)
    model.eval()
    summary = {
        "groups": list(groups),
        "epochs": len(history),
        "best_epoch": plateau.best_epoch,
        "best_val_loss": plateau.best,
        "val_loss_before": start_loss,
        "stopped": plateau.stopped,
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
    """The fine-tuned model's fingerprint: the ``finetune`` config sections, the source weights, groups, settings."""
    return fingerprint(cfg, "finetune", source=source_digest, groups=list(groups), settings=asdict(settings))


def _finished(model_dir: Path, fp: str) -> dict[str, Any] | None:
    """The ``finetune`` record of a complete variant (trained with ``fp``), or None: a variant
    whose model.json is damaged or lacks a valid ``finetune`` object is trained again."""
    if not is_complete(model_dir, fp):
        return None
    path = model_dir / "model.json"
    try:
        return FinetuneInfo.from_dict(ModelRecord.load(path).extra.get("finetune"), path).to_dict()
    except RecordError:
        return None


def find_standard(run_dir: Path, exclude: Sequence[str] = ()) -> str | None:
    """The run's standard model: ``standard`` if it has eps 0, else the first eps-0 model by name."""
    names = []
    for meta_path in sorted((run_dir / "models").glob("*/model.json")):
        name = meta_path.parent.name
        if name in exclude:
            continue
        try:
            meta = ModelRecord.load(meta_path)
        except RecordError:
            continue
        if meta.eps == 0 and not meta.extra.get("finetuned_from"):
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
    settings = settings or FinetuneSettings()
    settings.check()
    if images not in ("correct", "all"):
        raise FinetuneSettingError("images", f"must be 'correct' or 'all', got {images!r}")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    src_dir = run_dir / "models" / source
    if not (src_dir / "model.json").exists() or not (src_dir / "model.safetensors").exists():
        found = sorted(p.parent.name for p in (run_dir / "models").glob("*/model.json"))
        raise CheckpointError(
            f"model {source!r} is not in {run_dir / 'models'} (found: {', '.join(found) or 'none'}); "
            "train it first or fine-tune one of those"
        )
    dev = resolve_device(device if device is not None else cfg.device)
    with RunLock(run_dir):
        data = load_run_data(run_dir)
        src_meta = ModelRecord.load(src_dir / "model.json")
        if not src_meta.eps:
            say(f"robsal: warning: {source} has eps 0 (a standard model); Appendix D fine-tunes a robust one")
        digest = _file_digest(src_dir / "model.safetensors")
        done: dict[str, dict[str, Any]] = {}
        for groups in variants:
            name = variant_name(source, groups)
            done[name] = _finetune_variant(run_dir, cfg, data, source, src_meta, digest, groups, settings,
                                           device=dev, progress=progress, force=force)
        std = standard or find_standard(run_dir, exclude=[source, *done])
        if std is not None and not (run_dir / "models" / std / "model.json").exists():
            raise FinetuneSettingError("standard", f"{std!r} is not a model in {run_dir / 'models'}")
        table, gate, paths = write_outputs(run_dir, cfg, data, source, std, done, asdict(settings),
                                           figures=figures, images=images, device=dev, progress=progress)
    return FinetuneResult(run_dir, source, std, done, table, paths, gate.reasons)


def _finetune_variant(
    run_dir: Path, cfg: Config, data: Any, source: str, src_meta: ModelRecord, digest: str,
    groups: Sequence[int], settings: FinetuneSettings, *, device: torch.device, progress: bool, force: bool,
) -> dict[str, Any]:
    """Fine-tune, evaluate and save one variant (or skip it when complete); its ``finetune`` summary."""
    name = variant_name(source, groups)
    model_dir = run_dir / "models" / name
    fp = finetune_fingerprint(cfg, digest, groups, settings)
    done = None if force else _finished(model_dir, fp)
    if done is not None:
        say(f"{name}: already fine-tuned, skipping")
        return done
    say(f"{name}: fine-tuning groups {variant_label(groups)} of {source} (lr {settings.lr:g})")
    seed = int(cfg.seed if src_meta.seed is None else src_meta.seed)
    model = load(run_dir / "models" / source, device)
    model_dir.mkdir(parents=True, exist_ok=True)
    history_path = model_dir / "history.jsonl"
    if history_path.exists():
        history_path.unlink()
    t0 = time.perf_counter()
    _, summary = finetune_model(model, data, cfg, groups, settings, seed=seed, device=device, progress=progress,
                                name=name, history_path=history_path)
    seconds = time.perf_counter() - t0
    metrics = evaluate_model(model, data, cfg, device=device, progress=progress, desc=name)
    model.meta = {k: model.meta[k] for k in KEEP_META if k in model.meta}
    save(
        model, model_dir,
        name=name,
        eps=float(src_meta.eps or 0.0),
        eps_l2=float(src_meta.eps_l2 or 0.0),
        adversary=None,
        seed=seed,
        finetuned_from={
            "name": source, "eps": src_meta.eps, "fingerprint": src_meta.fingerprint,
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
    say(f"{name}: {summary['epochs']} epochs ({summary['stopped']}), best epoch {summary['best_epoch']}, "
        f"clean accuracy {metrics['clean_accuracy']:.1%}")
    return summary
