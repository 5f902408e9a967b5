"""The main job: dataset -> splits -> (tuning) -> standard + robust training -> saliency ->
metrics -> report, resumable stage by stage (``robsal run``).

Each stage records its completion in ``RUN/stages.json`` with a fingerprint of the config
sections it depends on; re-running the same command skips finished stages and completes
the rest. The stage functions are the public ones of each package, so a user can also call
them one by one (``robsal train``, ``robsal explain``, ``robsal evaluate``, ``robsal report``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robsal.config import Config
from robsal.io import read_json
from robsal.errors import ConfigError
from robsal.runs import RunLock, fingerprint, init_run, is_done, mark_done


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    sections: tuple[str, ...]  # config sections whose change invalidates the stage
    run: Callable[[Config, Path, dict[str, Any]], Any]
    enabled: Callable[[Config], bool] = lambda cfg: True


def _stage_data(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.data import prepare

    state["data"] = prepare(cfg, run_dir, progress=state["progress"])


def _data(cfg: Config, run_dir: Path, state: dict[str, Any]):
    if state.get("data") is None:
        from robsal.data import prepare

        state["data"] = prepare(cfg, run_dir, progress=state["progress"])
    return state["data"]


def _stage_tune(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.training import tune

    tune(cfg, run_dir, _data(cfg, run_dir, state), device=state["device"], progress=state["progress"])


def _stage_train(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.training import train_models

    train_models(cfg, run_dir, _data(cfg, run_dir, state), device=state["device"], progress=state["progress"])


def _stage_explain(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.saliency import explain_run

    explain_run(run_dir, data=_data(cfg, run_dir, state), device=state["device"], progress=state["progress"])


def _stage_evaluate(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.metrics import evaluate_run

    evaluate_run(run_dir, data=_data(cfg, run_dir, state), device=state["device"], progress=state["progress"])


def _stage_report(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    from robsal.report import build_report

    state["report"] = build_report(run_dir)


STAGES: tuple[Stage, ...] = (
    Stage("data", "prepare data and splits", ("data",), _stage_data),
    Stage("tune", "5-fold CV hyper-parameter search", ("data", "model", "train", "tune"), _stage_tune,
          enabled=lambda cfg: cfg.tune.enabled),
    Stage("train", "train standard and robust models",
          ("data", "augment", "model", "train", "adversary", "models", "tune", "robustness"), _stage_train),
    Stage("explain", "saliency maps", ("saliency",), _stage_explain),
    Stage("evaluate", "metrics and statistics", ("saliency", "metrics"), _stage_evaluate),
    Stage("report", "figures and HTML report", (), _stage_report),
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_pipeline(
    cfg: Config,
    run_dir: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    force: tuple[str, ...] = (),
) -> Path:
    """Run every stage of the main job into ``run_dir``; return the report's path.

    Finished stages (same config fingerprint) are skipped unless named in ``force``.
    A stage whose inputs changed invalidates every later stage too.
    """
    from robsal.training.distributed import torchrun_env
    from robsal.utils import resolve_device

    env = torchrun_env()
    if env is not None and env.world_size > 1:
        raise ConfigError(
            f"robsal run does not run under torchrun (WORLD_SIZE={env.world_size}); train data-parallel with "
            "`torchrun --nproc_per_node N -m robsal train ...` first, then `robsal run` with the same config "
            "and --out (it skips the trained models)"
        )
    run_dir = Path(run_dir)
    with RunLock(run_dir):
        init_run(cfg, run_dir)
        state: dict[str, Any] = {
            "device": resolve_device(device or cfg.device),
            "progress": progress,
            "data": None,
        }
        stages = [s for s in STAGES if s.enabled(cfg)]
        redo = False
        t_all = time.perf_counter()
        for k, stage in enumerate(stages, 1):
            # Each stage's fingerprint covers its own sections and those of every earlier stage.
            sections = sorted({sec for s in stages[:k] for sec in s.sections})
            fp = fingerprint(cfg, *sections)
            if not redo and stage.name not in force and is_done(run_dir, stage.name, fp):
                _say(f"[{k}/{len(stages)}] {stage.title}: done earlier, skipped")
                continue
            redo = True
            _say(f"[{k}/{len(stages)}] {stage.title} ...")
            t0 = time.perf_counter()
            stage.run(cfg, run_dir, state)
            dt = time.perf_counter() - t0
            mark_done(run_dir, stage.name, seconds=round(dt, 2), fp=fp)
            _say(f"[{k}/{len(stages)}] {stage.title}: done in {dt:.1f} s")
        _say(f"finished in {time.perf_counter() - t_all:.1f} s")
    report = run_dir / "report.html"
    for line in summary_lines(run_dir):
        _say(line)
    _say(f"report: {report}")
    return report


def summary_lines(run_dir: str | Path) -> list[str]:
    """The last lines for the terminal: accuracies, per-class recall, the competence gate when it
    failed (``not comparable: <reasons>``), and the headline metric verdicts."""
    run_dir = Path(run_dir)
    lines = []
    accs = []
    for meta_path in sorted((run_dir / "models").glob("*/model.json")):
        m = read_json(meta_path).get("metrics", {})
        clean = m.get("clean_accuracy")
        rob = m.get("robust_accuracy", {})
        r = ""
        if rob:
            eps, acc = max(rob.items(), key=lambda kv: float(kv[0]))
            r = f", robust@{eps} {acc:.1%}"
        if clean is not None:
            accs.append(f"{meta_path.parent.name} {clean:.1%}{r}")
    if accs:
        lines.append("accuracy: " + "; ".join(accs))
    summary = run_dir / "metrics" / "summary.json"
    if summary.exists():
        doc = read_json(summary)
        gate = doc.get("gate") if isinstance(doc.get("gate"), dict) else {}
        recall = gate.get("recall") if isinstance(gate.get("recall"), dict) else {}
        if recall:  # per-class test recall of every model: the competence behind the verdicts
            lines.append("recall: " + "; ".join(
                f"{m} " + " ".join(f"{c} {v:.2f}" if isinstance(v, (int, float)) else f"{c} ?" for c, v in r.items())
                for m, r in recall.items() if isinstance(r, dict)))
        if doc.get("comparable") is False:
            lines.append(f"not comparable: {'; '.join(gate.get('reasons') or [])}")
        verdicts = [v for v in doc.get("verdicts", []) if isinstance(v, dict)]
        # Headline: the paper's two main claims for its main method (Gradient), first robust model.
        for claim in ("sharper", "on_lesion"):
            hits = [v for v in verdicts if v.get("claim") == claim and v.get("method") == "gradient"]
            hits = hits or [v for v in verdicts if v.get("claim") == claim]
            if hits and hits[0].get("line"):
                lines.append(hits[0]["line"])
    return lines[:5]
