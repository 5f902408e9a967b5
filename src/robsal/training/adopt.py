"""An imported model joins a run: ``models: [{name: mine, path: DIR}]`` (``robsal run --models mine=DIR``).

Instead of training, the train stage copies the model directory that ``robsal import-model``
wrote (or another run's ``models/<name>``) into ``RUN/models/<name>/`` and measures it on
the run's test split exactly as it measures the models it trains (clean, balanced and
per-class accuracy, robust accuracy), so the competence gate, the maps and the verdicts treat
it the same way. Its eps (its role: standard or robust) is the one in its ``model.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from robsal import signals
from robsal.config import Config, ModelSpec
from robsal.errors import CheckpointError
from robsal.rundir import fingerprint


def adoption_fingerprint(cfg: Config, spec: ModelSpec) -> str:
    """The trained-model fingerprint plus the source directory and the sha256 of its weights."""
    from robsal.models.imported import sha256

    src = Path(str(spec.path))
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            f"models.{spec.name}.path: {src} is not a robsal model directory (no model.safetensors); "
            "make one with `robsal import-model`"
        )
    return fingerprint(cfg, "training", spec={"name": spec.name, "eps": spec.eps, "seed": spec.seed},
                       adopted={"path": str(src.resolve()), "sha256": sha256(weights)})


def adopt_one(cfg: Config, spec: ModelSpec, data, model_dir: Path, *, fp: str, device: torch.device,
              progress: bool = True) -> Path:
    """Copy ``spec.path`` into ``model_dir`` (weights unchanged), evaluate it, write ``model.json``
    with fingerprint ``fp`` (:func:`adoption_fingerprint`)."""
    from robsal.models import load, save
    from robsal.training.evaluate import evaluate_model
    from robsal.utils import git_commit

    src = Path(str(spec.path))
    model = load(src, device)
    classes, size = list(model.meta["classes"]), int(model.meta.get("image_size") or 224)
    if classes != list(data.classes):
        raise CheckpointError(
            f"models.{spec.name}: {src} predicts {classes} but the data's classes are {list(data.classes)}; "
            "set data.classes to the model's classes in its output order"
        )
    if size != int(data.image_size):
        raise CheckpointError(
            f"models.{spec.name}: {src} takes {size} px images but data.image_size is {data.image_size}; "
            f"run with --set data.image_size={size}"
        )
    t0 = time.perf_counter()
    metrics = evaluate_model(model, data, cfg, device=device, progress=progress, desc=spec.name)
    extra: dict[str, Any] = {"name": spec.name, "eps": float(model.meta.get("eps") or 0.0),
                             "adopted_from": str(src.resolve()), "config": cfg.to_dict(), "commit": git_commit(),
                             "fingerprint": fp, "metrics": metrics}
    with signals.deferred():  # model.safetensors and model.json are written as a pair
        save(model.to("cpu"), model_dir, **extra)
    if progress:
        print(f"{spec.name}: imported from {src} and evaluated in {time.perf_counter() - t0:.1f} s", flush=True)
    return model_dir
