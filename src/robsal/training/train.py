"""Standard and adversarial training of every model a config lists (paper Section 2, Appendix A).

The paper's method: tune hyper-parameters with standard training (``robsal tune``,
:mod:`robsal.training.cv`), then train the same model from scratch with PGD
adversarial training reusing them. Here every model of ``cfg.models`` (eps = 0:
standard; eps > 0: adversarial, eps in paper units) is trained with the same
seed, the same initial weights, the same data order and augmentations, and the
same hyper-parameters; only the inputs of the update differ.

Tuned hyper-parameters: when ``RUN/tune/best.json`` exists (written by
``robsal tune``), its ``lr`` and ``batch_size`` replace ``train.phase2.lr`` and
``train.phase2.batch_size`` for every model trained in that run (the paper tuned
the fine-tuning phase only); model.json records them under ``"tuned"``.

Output per model (``RUN/models/<name>/``): ``model.safetensors``, ``model.json``
(with ``"metrics"``), ``history.jsonl`` (one JSON object per epoch). A model whose
model.json carries metrics and the same training fingerprint is skipped (resume).

While a model trains, ``RUN/models/<name>/checkpoint/`` holds the state after the last
two finished epochs (:mod:`robsal.training.checkpoint`); an interrupted run (SIGKILL,
Ctrl-C, SIGTERM, crash, full disk) resumes from it when the same command is run again and
ends with the same weights as an uninterrupted run. The checkpoints are deleted once the
final model is saved.

Started by ``torchrun`` (several processes, GPUs or nodes), training is data-parallel
(:mod:`robsal.training.distributed`): the config's batch sizes stay the global batch sizes,
the weights equal those of one process up to floating-point order, and only rank 0 writes
files. ``train.compile: true`` compiles the model's forward pass used for training and for
the training attack with ``torch.compile`` (:func:`robsal.training.loop.compile_model`);
what is saved is always the original module's ``state_dict``.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robsal import signals
from robsal.config import Config, ModelSpec
from robsal.data import load_run_data, prepare
from robsal.errors import DataError
from robsal.io import append_jsonl, clean_temporaries, write_text
from robsal.models import build_model
from robsal.rundir import TuneBest, fingerprint, is_complete
from robsal.training import distributed
from robsal.training.checkpoint import (
    LATEST,
    PREVIOUS,
    Checkpoint,
    load_latest,
    read_checkpoint,
    remove_checkpoints,
    restore_model,
    restore_optimizer,
    save_training_state,
)
from robsal.training.evaluate import accuracy, evaluate_model, mean_loss
from robsal.training.loop import Adversary, NonFiniteLoss, attack_radius, compile_model, make_augment, train_epoch
from robsal.training.phases import make_optimizer, make_scheduler, set_trainable
from robsal.training.plan import Phase, TrainPlan, train_accuracy_subset
from robsal.training.stopping import StopPolicy
from robsal.utils import git_commit, resolve_device, seed_everything


def adversary_for(cfg: Config, eps: float) -> Adversary | None:
    """The training adversary for a model with ``eps`` in paper units (None for eps = 0)."""
    if eps <= 0:
        return None
    radius = attack_radius(cfg, eps)
    return Adversary(
        eps=radius,
        norm=cfg.adversary.norm,
        steps=cfg.adversary.steps,
        step_size=radius * cfg.adversary.step_size_factor,
        random_start=cfg.adversary.random_start,
    )


def fit(model: nn.Module, data, plan: TrainPlan, *, stop: StopPolicy | None = None) -> list[dict[str, Any]]:
    """Train ``model`` on ``data`` (a robsal.data.PreparedData) as ``plan`` says; returns one record per epoch.

    The phases of the plan run in order; global epochs are counted from ``plan.start_epoch``
    (the number of epochs already trained, which also seeds the data order: see
    :mod:`robsal.training.loop`). Each record is appended to ``plan.history_path``.

    ``plan.checkpoint_dir``: the full training state is checkpointed there after every epoch
    (:mod:`robsal.training.checkpoint`), and training resumes from the checkpoint found
    there when its ``plan.fingerprint``, phase plan and ``start_epoch`` match: finished epochs
    are skipped, their history records come from the checkpoint, and ``history_path`` is
    rewritten to hold exactly them (emptied when there is nothing to resume). Because data
    order, augmentation and attack starts depend only on (seed, epoch), the resumed run ends
    with the same weights as an uninterrupted one. A NaN/inf loss raises
    :class:`~robsal.training.loop.NonFiniteLoss` naming ``plan.name``, the epoch and the batch;
    the last checkpoint stays as it was.

    ``stop`` (:mod:`robsal.training.stopping`, e.g. :class:`~robsal.training.stopping.Plateau`):
    after every epoch the mean validation loss on ``plan.val_idx`` goes to the policy, whose
    event ends training when it is ``"stop"``; the records then carry ``val_loss`` and
    ``event``. A policy's state is not checkpointed, so it cannot be combined with
    ``checkpoint_dir``.

    Inside a process group of several processes (``torchrun``; :mod:`robsal.training.distributed`)
    the BatchNorm layers are synchronised while training, the model is wrapped in
    ``DistributedDataParallel`` for every phase and each process trains on its share of every
    global batch; rank 0 alone writes ``history_path``, the checkpoints, ``tb_writer`` and the
    progress lines, and every process resumes from the checkpoint rank 0 chose. Every
    process returns the same history (timings aside). ``plan.compile``: the forward pass used for
    training and for the attack is ``torch.compile``d; ``model`` itself stays uncompiled.
    The model ends with every parameter trainable, as built.
    """
    if stop is not None and plan.checkpoint_dir is not None:
        raise ValueError("fit: a stop policy's state is not checkpointed; give either stop or checkpoint_dir")
    if stop is not None and (plan.val_idx is None or len(plan.val_idx) == 0):
        raise ValueError("fit: a stop policy needs validation rows (plan.val_idx)")
    run = _Fit(model, data, plan, stop)
    strategy = distributed.strategy()
    with strategy.synced_batchnorm(model, plan.device):
        run.train(strategy)
    if stop is not None:
        stop.finish(model)
    for p in model.parameters():  # leave the model fully trainable, as built
        p.requires_grad_(True)
    return run.history


class _Fit:
    """The state of one :func:`fit`: the resumed checkpoint, the history, the global epoch."""

    def __init__(self, model: nn.Module, data, plan: TrainPlan, stop: StopPolicy | None) -> None:
        self.model, self.data, self.plan, self.stop = model, data, plan, stop
        self.main = distributed.is_main()
        self.resume = (_resume_everywhere(plan.checkpoint_dir, plan.fingerprint, plan.phase_plan, plan.start_epoch,
                                          plan.name) if plan.checkpoint_dir else None)
        self.history: list[dict[str, Any]] = list(self.resume.state["history"]) if self.resume is not None else []
        if plan.checkpoint_dir is not None and plan.history_path is not None and self.main:
            write_text(plan.history_path, "".join(json.dumps(r) + "\n" for r in self.history))
        if self.resume is not None:
            restore_model(model, self.resume)
            if plan.shows_progress:
                print(f"{plan.name or 'model'}: resuming after epoch {self.resume.epoch} from {self.resume.path}",
                      flush=True)
        self.saved_epoch = self.resume.epoch if self.resume is not None else None
        self.epoch = plan.start_epoch
        if stop is not None:
            stop.start(model)

    def train(self, strategy: distributed.OneProcess) -> None:
        """The phases, epoch by epoch (appends to ``history``)."""
        plan, model = self.plan, self.model
        # the forward pass of the attack (and of training in one process); see compile_model
        attack_model = compile_model(model, plan.device) if plan.compile else model
        for index, phase in enumerate(plan.phases):
            done = self._epochs_done(index, phase)
            if done is None:
                continue
            params = set_trainable(model, phase.trains)
            train_model = strategy.wrap(model, plan.device, attack_model)
            optimizer = make_optimizer(params, phase.config, plan.betas, plan.weight_decay)
            scheduler = make_scheduler(optimizer, phase.config)
            if done:
                restore_optimizer(optimizer, scheduler, self.resume)
                self.epoch += done
            for phase_epoch in range(done + 1, phase.epochs + 1):
                self.epoch += 1
                lr = optimizer.param_groups[0]["lr"]
                stats = self._train_epoch(train_model, attack_model, optimizer, phase, phase_epoch)
                scheduler.step()
                rec = self._record(phase, phase_epoch, lr, stats)
                if self.stop is not None:
                    rec["val_loss"] = mean_loss(model, self.data, plan.val_idx, device=plan.device,
                                                batch_size=plan.eval_batch_size)
                    rec["event"] = self.stop.after_epoch(self.epoch, rec["val_loss"], model, optimizer)
                self._keep(rec, index, phase, phase_epoch, optimizer, scheduler)
                if rec.get("event") == "stop":
                    return

    def _epochs_done(self, index: int, phase: Phase) -> int | None:
        """Epochs of this phase the resumed checkpoint holds; None to skip the phase (empty or finished)."""
        if phase.epochs == 0:
            return None
        if self.resume is None or index > self.resume.state["phase_index"]:
            return 0
        if index < self.resume.state["phase_index"]:
            self.epoch += phase.epochs
            return None
        return int(self.resume.state["phase_epoch"])

    def _train_epoch(self, train_model: nn.Module, attack_model: nn.Module, optimizer: torch.optim.Optimizer,
                     phase: Phase, phase_epoch: int) -> dict[str, float]:
        plan = self.plan
        try:
            return train_epoch(
                train_model, self.data, plan.train_idx, optimizer,
                batch_size=phase.batch_size, seed=plan.seed, epoch=self.epoch, device=plan.device,
                adversary=plan.adversary, augment=plan.augment, amp=plan.amp, progress=plan.shows_progress,
                desc=f"{plan.name} {phase.name} {phase_epoch}/{phase.epochs}".strip(),
                frozen_bn_eval=plan.frozen_bn_eval, attack_model=attack_model,
            )
        except NonFiniteLoss as exc:
            kept = (f"the last good checkpoint (epoch {self.saved_epoch}) is kept in {plan.checkpoint_dir}"
                    if self.saved_epoch is not None else "no epoch finished, nothing was saved")
            raise NonFiniteLoss(
                f"{plan.name or 'model'}: {exc} ({phase.name} epoch {phase_epoch}/{phase.epochs}); {kept}; "
                f"lower {phase.lr_setting} or check the training images",
                epoch=exc.epoch, batch=exc.batch, n_batches=exc.n_batches, value=exc.value,
            ) from None

    def _record(self, phase: Phase, phase_epoch: int, lr: float, stats: dict[str, float]) -> dict[str, Any]:
        """The history record of the epoch just trained (clean accuracies measured now)."""
        plan, model = self.plan, self.model
        bs = plan.eval_batch_size
        rec: dict[str, Any] = {
            "epoch": self.epoch,
            "phase": phase.name,
            "phase_epoch": phase_epoch,
            "lr": lr,
            "batch_size": phase.batch_size,
            "train_loss": stats["train_loss"],
            # clean accuracy (eval mode, no augmentation) on a fixed subset of the train split
            "train_accuracy": accuracy(model, self.data, plan.train_eval_idx, device=plan.device, batch_size=bs)
            if plan.train_eval_idx is not None and len(plan.train_eval_idx) else None,
            # accuracy on the adversarial inputs the update was computed on (robust models)
            "adv_train_accuracy": stats["batch_accuracy"] if plan.adversary is not None else None,
            "val_accuracy": accuracy(model, self.data, plan.val_idx, device=plan.device, batch_size=bs)
            if plan.val_idx is not None and len(plan.val_idx) else None,
            "epoch_seconds": stats["epoch_seconds"],
            "images_per_second": stats["images_per_second"],
        }
        if plan.adversary is None:
            rec["batch_accuracy"] = stats["batch_accuracy"]  # clean augmented training batches
        return rec

    def _keep(self, rec: dict[str, Any], index: int, phase: Phase, phase_epoch: int,
              optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Append ``rec`` to the history (and its file), checkpoint, log to TensorBoard, print the epoch line."""
        plan, epoch = self.plan, self.epoch
        self.history.append(rec)
        if plan.history_path is not None and self.main:
            append_jsonl(plan.history_path, rec)
        if plan.checkpoint_dir is not None:  # rank 0 writes, the other processes wait for it
            position = {"epoch": epoch, "phase_index": index, "phase": phase.name, "phase_epoch": phase_epoch,
                        "plan": plan.phase_plan, "start_epoch": plan.start_epoch}
            distributed.on_main(lambda: save_training_state(
                plan.checkpoint_dir, model=self.model, optimizer=optimizer, scheduler=scheduler,
                position=position, history=self.history, fingerprint=plan.fingerprint,
            ))
            self.saved_epoch = epoch
        if plan.tb_writer is not None and self.main:
            for k in ("train_loss", "train_accuracy", "adv_train_accuracy", "val_accuracy", "val_loss",
                      "images_per_second"):
                if rec.get(k) is not None:
                    plan.tb_writer.add_scalar(k, rec[k], epoch)
        if plan.shows_progress:  # one line per epoch, also in logs (bars only on terminals)
            shown = {k: rec.get(k) for k in ("train_loss", "train_accuracy", "adv_train_accuracy", "val_accuracy",
                                             "val_loss")}
            event = f" ({rec['event']})" if "event" in rec else ""
            print(f"{plan.name} epoch {epoch} ({phase.name}): " + ", ".join(
                f"{k}={v:.3f}" for k, v in shown.items() if v is not None) + event, flush=True)


def _resume_everywhere(
    checkpoint_dir: Path, fingerprint: str, plan: list[list[Any]], start_epoch: int, name: str
) -> Checkpoint | None:
    """:func:`_find_resume` in rank 0 (which may delete stale files); the other processes load the file it chose."""
    if not distributed.active():
        return _find_resume(checkpoint_dir, fingerprint, plan, start_epoch, name)
    ck = distributed.on_main(lambda: _find_resume(checkpoint_dir, fingerprint, plan, start_epoch, name))
    which = distributed.broadcast_int(-1 if ck is None else (0 if ck.path.name == LATEST else 1))
    if distributed.is_main() or which < 0:
        return ck
    return read_checkpoint(Path(checkpoint_dir) / (LATEST, PREVIOUS)[which])


def _find_resume(
    checkpoint_dir: Path, fingerprint: str, plan: list[list[Any]], start_epoch: int, name: str
) -> Checkpoint | None:
    """The checkpoint to resume from, or None (stale temporaries and unusable checkpoints removed)."""
    clean_temporaries(checkpoint_dir)
    ck = load_latest(checkpoint_dir, fingerprint=fingerprint)
    if ck is None:
        remove_checkpoints(checkpoint_dir)
        return None
    if ck.state.get("plan") != plan or ck.state.get("start_epoch") != start_epoch:
        warnings.warn(
            f"{ck.path} was written for another phase plan ({ck.state.get('plan')}, not {plan}); "
            f"training {name or 'the model'} from the start", stacklevel=3,
        )
        remove_checkpoints(checkpoint_dir)
        return None
    return ck


def tuned_hyperparameters(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/tune/best.json`` (lr, batch_size) when ``robsal tune`` ran in this run, else None."""
    path = Path(run_dir) / "tune" / "best.json"
    if not path.exists():
        return None
    best = TuneBest.load(path)  # one-line RecordError when damaged or edited
    return {"lr": float(best.lr), "batch_size": int(best.batch_size)}


def apply_tuned(cfg: Config, tuned: dict[str, Any] | None) -> Config:
    """A copy of ``cfg`` with the tuned phase-2 lr and batch size (the paper tuned fine-tuning)."""
    cfg = copy.deepcopy(cfg)
    if tuned:
        cfg.train.phase2.lr = tuned["lr"]
        cfg.train.phase2.batch_size = tuned["batch_size"]
    return cfg


def training_fingerprint(cfg: Config, spec: ModelSpec) -> str:
    """Hash of everything that determines a trained model (config sections, spec, seed)."""
    return fingerprint(cfg, "training", spec={"name": spec.name, "eps": spec.eps, "seed": spec.seed})


def _tensorboard(log_dir: Path):
    """A SummaryWriter when TensorBoard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def train_one(
    cfg: Config,
    spec: ModelSpec,
    data,
    model_dir: Path,
    *,
    device: torch.device,
    progress: bool = True,
    tuned: dict[str, Any] | None = None,
) -> Path:
    """Build, train, evaluate and save one model into ``model_dir``.

    Training checkpoints every epoch into ``model_dir/checkpoint/`` and resumes from there
    when a matching checkpoint exists (see :func:`fit`); once ``model.safetensors`` and
    ``model.json`` are written the checkpoints are deleted (the model directory then holds
    only the final model, as before checkpoints existed).

    Data-parallel (``torchrun``): every process trains and evaluates (same weights, same
    results); rank 0 writes the model directory while the others wait.
    """
    seed = cfg.seed if spec.seed is None else spec.seed
    train_idx = data.indices("train")
    if len(train_idx) == 0:
        raise DataError("the run has no training images; check data.train_per_class and splits.csv")
    seed_everything(seed)  # same seed -> same initial weights for every model of the run
    model = build_model(
        cfg.model.arch, data.classes, pretrained=cfg.model.pretrained, pretrained_path=cfg.model.pretrained_path,
        mean=cfg.model.mean, std=cfg.model.std, image_size=data.image_size,
    ).to(device)
    if cfg.train.channels_last and device.type == "cuda":  # faster convolutions on GPUs; CPU keeps NCHW
        model = model.to(memory_format=torch.channels_last)
    main = distributed.is_main()

    def make_dir() -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        clean_temporaries(model_dir)  # left by a killed earlier attempt (the run lock is held)

    distributed.on_main(make_dir)
    fp = training_fingerprint(cfg, spec)
    adversary = adversary_for(cfg, spec.eps)
    tb = _tensorboard(model_dir / "tensorboard") if main else None
    plan = TrainPlan.from_config(
        cfg, [("phase1", cfg.train.phase1), ("phase2", cfg.train.phase2)], train_idx, seed=seed, device=device,
        adversary=adversary, augment=make_augment(cfg.augment), val_idx=data.indices("val"),
        train_eval_idx=train_accuracy_subset(train_idx, seed), history_path=model_dir / "history.jsonl",
        progress=progress, name=spec.name, tb_writer=tb, checkpoint_dir=model_dir / "checkpoint", fingerprint=fp,
    )
    start = time.perf_counter()
    history = fit(model, data, plan)
    train_seconds = time.perf_counter() - start
    if tb is not None:
        tb.close()
    metrics = evaluate_model(model, data, cfg, device=device, progress=progress and main, desc=spec.name)
    distributed.on_main(lambda: _save_model(model, model_dir, cfg, spec, adversary, seed, tuned, fp,
                                            train_seconds, len(history), metrics))
    return model_dir


def _save_model(
    model: nn.Module, model_dir: Path, cfg: Config, spec: ModelSpec, adversary: Adversary | None, seed: int,
    tuned: dict[str, Any] | None, fp: str, train_seconds: float, epochs: int, metrics: dict[str, Any],
) -> None:
    """Write ``model.safetensors`` + ``model.json`` and delete the epoch checkpoints."""
    from robsal.models import save

    with signals.deferred():  # model.safetensors and model.json are written as a pair
        save(
            model.to(memory_format=torch.contiguous_format), model_dir,
            name=spec.name,
            eps=float(spec.eps),
            eps_l2=adversary.eps if adversary is not None else 0.0,  # the effective radius trained against
            eps_scaling=None if cfg.adversary.eps_reference_size is None else {
                "rule": cfg.adversary.eps_scaling, "reference_size": cfg.adversary.eps_reference_size,
                "image_size": cfg.data.image_size,
            },
            adversary=None if adversary is None else {
                "norm": adversary.norm, "steps": adversary.steps, "step_size": adversary.step_size,
                "random_start": adversary.random_start,
            },
            seed=seed,
            tuned=tuned,
            config=cfg.to_dict(),
            commit=git_commit(),
            fingerprint=fp,
            train_seconds=train_seconds,
            epochs=epochs,
            metrics=metrics,
        )
    remove_checkpoints(model_dir / "checkpoint")  # the finished model replaces its epoch checkpoints


def train_models(
    cfg: Config,
    run_dir: str | Path,
    data=None,
    *,
    device: str | torch.device | None = None,
    names: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Train (or skip, when already complete) every model of ``cfg.models``; name -> model directory.

    ``data`` defaults to the run's prepared data (``RUN/splits.csv``; prepared now if absent).
    ``names`` restricts training to some models (unknown names raise ConfigError).
    Interrupted training resumes from each model's epoch checkpoint (:func:`train_one`).

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every model is trained data-parallel by all
    processes (:mod:`robsal.training.distributed`): the process group is started here unless
    it already runs, each process uses ``cuda:LOCAL_RANK`` (or the CPU), rank 0 holds the run
    lock, prepares the data first and writes every file; the others read after it.
    """
    run_dir = Path(run_dir)
    specs = [cfg.model_spec(n) for n in names] if names else list(cfg.models)
    out: dict[str, Path] = {}
    with distributed.session(resolve_device(device if device is not None else cfg.device)) as dev, \
            distributed.main_lock(run_dir):  # one writer of the checkpoints (`robsal run` may hold it already)
        progress = progress and distributed.is_main()
        if data is None:
            data = distributed.main_first(
                lambda: load_run_data(run_dir) if (run_dir / "splits.csv").exists()
                else prepare(cfg, run_dir, progress=progress)
            )
        tuned = tuned_hyperparameters(run_dir)
        cfg_t = apply_tuned(cfg, tuned)
        for spec in specs:
            model_dir = run_dir / "models" / spec.name
            if spec.path is not None:  # a model robsal did not train (robsal.training.adopt)
                from robsal.training.adopt import adopt_one, adoption_fingerprint

                fp = adoption_fingerprint(cfg_t, spec)  # hashes the weights file once
                if not is_complete(model_dir, fp):
                    distributed.on_main(lambda s=spec, d=model_dir, f=fp: adopt_one(
                        cfg_t, s, data, d, fp=f, device=dev, progress=progress))
                elif progress:
                    print(f"{spec.name}: already imported, skipping", flush=True)
            elif is_complete(model_dir, training_fingerprint(cfg_t, spec)):
                # left if killed right after the final save
                distributed.on_main(lambda d=model_dir: remove_checkpoints(d / "checkpoint"))
                if progress:
                    print(f"{spec.name}: already trained, skipping", flush=True)
            else:
                train_one(cfg_t, spec, data, model_dir, device=dev, progress=progress, tuned=tuned)
            out[spec.name] = model_dir
    return out
