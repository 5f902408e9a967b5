"""Read whatever a run directory holds, for the report (DESIGN.md: the run directory contract).

A partial run is normal (training done, saliency not yet): an absent part is
recorded as a plain sentence in :attr:`RunContents.missing` and the report says
so. A part that is present but unreadable (truncated JSON, a CSV without the
contract's columns, a JSON record of an older robsal) is an error:
:class:`~robsal.errors.UserError` naming the file and the fix, never silently skipped.
The JSON files are read as the records of :mod:`robsal.rundir.records`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from robsal import data as run_data
from robsal.errors import CheckpointError, DataError, UserError
from robsal.io import load_npz
from robsal.rundir import (
    FIGURE_INDEX, RUN_MARKERS, FigureIndex, ModelRecord, RunInfo, Selection, StageLedger, Summary, is_run_dir,
)

PER_IMAGE_COLUMNS = ["image_id", "model", "method", "metric", "value"]
SALIENCY_KEYS = ("maps", "image_ids", "targets", "predictions")


@dataclass
class ModelInfo:
    """One trained model: ``models/<name>/model.json`` (``record``; None while it trains) and ``history.jsonl`` rows."""

    name: str
    record: ModelRecord | None
    history: list[dict[str, Any]]


@dataclass
class SaliencySet:
    """``saliency/<model>/<method>.npz``: maps (N, H, W) float32 and per-image fields."""

    maps: np.ndarray
    image_ids: list[str]
    targets: np.ndarray
    predictions: np.ndarray

    def row(self, image_id: str) -> int | None:
        try:
            return self.image_ids.index(image_id)
        except ValueError:
            return None


@dataclass
class RunContents:
    run_dir: Path
    config_text: str | None = None
    config: dict[str, Any] | None = None
    run_info: RunInfo = field(default_factory=RunInfo)
    stages: StageLedger = field(default_factory=StageLedger)
    splits: pd.DataFrame | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    saliency: dict[str, dict[str, SaliencySet]] = field(default_factory=dict)  # model -> method -> set
    selection: Selection | None = None  # saliency/selection.json: how the explained images were chosen
    per_image: pd.DataFrame | None = None
    summary_csv: pd.DataFrame | None = None
    summary: Summary | None = None  # metrics/summary.json
    figures: list[Path] = field(default_factory=list)  # RUN/figures/*.png
    figure_index: FigureIndex | None = None  # RUN/figures/index.json (None: a run of an older robsal)
    data: Any = None  # robsal.data.PreparedData or None
    missing: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        if self.config and isinstance(self.config.get("data"), dict):
            classes = self.config["data"].get("classes")
            if isinstance(classes, list):
                return [str(c) for c in classes]
        if self.data is not None:
            return list(self.data.classes)
        for info in self.models.values():
            if info.record is not None:
                return list(info.record.classes)
        return []

    @property
    def methods(self) -> list[str]:
        """Saliency methods present, in the config's order, then any others."""
        found: list[str] = []
        for per_method in self.saliency.values():
            for m in per_method:
                if m not in found:
                    found.append(m)
        order = []
        if self.config and isinstance(self.config.get("saliency"), dict):
            order = [str(m) for m in self.config["saliency"].get("methods") or []]
        return [m for m in order if m in found] + [m for m in found if m not in order]


def _read_history(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckpointError(
                f"{path} line {lineno} is not valid JSON ({exc.msg}); re-run `robsal train` for this model"
            ) from None
        if not isinstance(row, dict):
            raise CheckpointError(f"{path} line {lineno} is not a JSON object; re-run `robsal train`")
        rows.append(row)
    return rows


def _read_csv(path: Path, required: list[str], fix: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str})
    except pd.errors.ParserError as exc:
        raise UserError(f"{path} is not a readable CSV ({str(exc).splitlines()[0]}); {fix}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; {fix}") from None
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise UserError(f"{path} lacks the column(s) {', '.join(absent)}; {fix}")
    return df


def _model_order(run: RunContents, names: list[str]) -> list[str]:
    order = []
    if run.config and isinstance(run.config.get("models"), list):
        order = [str(m.get("name")) for m in run.config["models"] if isinstance(m, dict)]
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def collect(run_dir: str | Path, data: Any = None) -> RunContents:
    """Read every part of ``run_dir`` that exists; list the absent parts in ``missing``.

    ``data`` (a PreparedData) is used for example images when given; otherwise
    :func:`robsal.data.load_run_data` is tried and its failure is reported as missing.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; pass the --out folder of `robsal run`")
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the --out folder of `robsal run`")
    # a report of an empty folder lists everything as missing; a folder of other files is no run
    if any(p.name != ".lock" for p in run_dir.iterdir()) and not is_run_dir(run_dir):
        raise UserError(
            f"{run_dir} is not a robsal run directory (none of {', '.join(RUN_MARKERS)}); "
            "pass the --out folder of `robsal run`"
        )
    run = RunContents(run_dir=run_dir)
    _read_config(run)
    if (run_dir / "run.json").exists():
        run.run_info = RunInfo.load(run_dir / "run.json")
    if (run_dir / "stages.json").exists():
        run.stages = StageLedger.load(run_dir / "stages.json")
    splits_path = run_dir / "splits.csv"
    if splits_path.exists():
        run.splits = _read_csv(
            splits_path, ["image_id", "label", "split"], "re-run `robsal run` (data preparation) to rewrite it"
        )
    else:
        run.missing.append("splits.csv is missing: data preparation has not run, so no dataset summary.")
    _read_models(run)
    _read_maps(run)
    _read_metrics(run)
    fig_dir = run_dir / "figures"
    run.figures = sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []
    if (run_dir / FIGURE_INDEX).exists():
        run.figure_index = FigureIndex.load(run_dir / FIGURE_INDEX)
    run.data = data if data is not None else _try_load_data(run)
    return run


def _read_config(run: RunContents) -> None:
    """config.yaml: its text (shown verbatim) and its values."""
    cfg_path = run.run_dir / "config.yaml"
    if not cfg_path.exists():
        run.missing.append("config.yaml is missing: the exact config of this run is unknown.")
        return
    run.config_text = cfg_path.read_text(encoding="utf-8")
    try:
        loaded = yaml.safe_load(run.config_text)
    except yaml.YAMLError as exc:
        raise UserError(f"{cfg_path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    run.config = loaded if isinstance(loaded, dict) else None


def _read_models(run: RunContents) -> None:
    """models/<name>/{model.json, history.jsonl}."""
    models_dir = run.run_dir / "models"
    names = [p.name for p in models_dir.iterdir() if p.is_dir()] if models_dir.is_dir() else []
    for name in _model_order(run, names):
        mdir = models_dir / name
        record = None
        if (mdir / "model.json").exists():
            record = ModelRecord.trained(mdir / "model.json")
        else:
            run.missing.append(f"models/{name}/model.json is missing: model {name} has not finished training.")
        history = _read_history(mdir / "history.jsonl") if (mdir / "history.jsonl").exists() else []
        run.models[name] = ModelInfo(name=name, record=record, history=history)
    if not run.models:
        run.missing.append("models/ is empty or missing: no model has been trained yet.")


def _read_maps(run: RunContents) -> None:
    """saliency/<model>/<method>.npz and saliency/selection.json."""
    sal_dir = run.run_dir / "saliency"
    sal_models = [p.name for p in sal_dir.iterdir() if p.is_dir()] if sal_dir.is_dir() else []
    for name in _model_order(run, sal_models):
        per_method: dict[str, SaliencySet] = {}
        for path in sorted((sal_dir / name).glob("*.npz")):
            per_method[path.stem] = _read_saliency(path)
        if per_method:
            run.saliency[name] = per_method
    if not run.saliency:
        run.missing.append("saliency/ holds no maps: the saliency stage has not run.")
    elif (sal_dir / "selection.json").exists():
        run.selection = Selection.load(sal_dir / "selection.json")


def _read_metrics(run: RunContents) -> None:
    """metrics/per_image.csv, summary.csv and summary.json."""
    metrics_dir = run.run_dir / "metrics"
    fix = "re-run `robsal evaluate` to rewrite it"
    if (metrics_dir / "per_image.csv").exists():
        run.per_image = _read_csv(metrics_dir / "per_image.csv", PER_IMAGE_COLUMNS, fix)
        run.per_image["image_id"] = run.per_image["image_id"].astype(str)
    else:
        run.missing.append("metrics/per_image.csv is missing: no per-image metrics (and so no failure cases).")
    if (metrics_dir / "summary.csv").exists():
        run.summary_csv = _read_csv(metrics_dir / "summary.csv", [], fix)
    if (metrics_dir / "summary.json").exists():
        run.summary = Summary.load(metrics_dir / "summary.json")
    if run.summary_csv is None and run.summary is None:
        run.missing.append("metrics/summary.csv and summary.json are missing: no statistics yet.")


def _read_saliency(path: Path) -> SaliencySet:
    try:
        arrays = load_npz(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable .npz ({exc}); re-run `robsal explain`") from None
    absent = [k for k in SALIENCY_KEYS if k not in arrays]
    if absent:
        raise UserError(f"{path} lacks the array(s) {', '.join(absent)}; re-run `robsal explain`")
    maps = np.asarray(arrays["maps"], dtype=np.float32)
    n = maps.shape[0] if maps.ndim == 3 else -1
    if maps.ndim != 3 or any(len(arrays[k]) != n for k in SALIENCY_KEYS[1:]):
        raise UserError(
            f"{path}: maps must be (N, H, W) with N image_ids/targets/predictions, got maps {maps.shape}; "
            "re-run `robsal explain`"
        )
    return SaliencySet(
        maps=maps,
        image_ids=[str(i) for i in arrays["image_ids"]],
        targets=np.asarray(arrays["targets"], dtype=np.int64),
        predictions=np.asarray(arrays["predictions"], dtype=np.int64),
    )


def _try_load_data(run: RunContents) -> Any:
    """The run's PreparedData for example images, or None with a sentence in ``missing``."""
    if run.splits is None or run.config is None:
        return None
    try:
        return run_data.load_run_data(run.run_dir)  # looked up at call time: tests replace it
    except (DataError, UserError, OSError) as exc:
        run.missing.append(f"example images: the run's images could not be loaded ({exc}).")
        return None
