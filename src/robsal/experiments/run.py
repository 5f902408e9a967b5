"""The main job: dataset -> splits -> (tuning) -> standard + robust training -> saliency ->
metrics -> report, resumable stage by stage (``robsal run``).

Each stage records its completion in ``RUN/stages.json`` with a fingerprint of the config
sections it depends on; re-running the same command skips finished stages and completes
the rest. The stage functions are the public ones of each package, so a user can also call
them one by one (``robsal train``, ``robsal explain``, ``robsal evaluate``, ``robsal report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robsal.config import Config
from robsal.errors import ConfigError
from robsal.rundir import ModelRecord, RunLock, Stage, Summary, init_run, run_stages
from robsal.utils import say


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


# The main job, in order. A stage's fingerprint is its entry of robsal.rundir.SECTIONS
# (its own config sections and those of every earlier stage).
STAGES: tuple[Stage, ...] = (
    Stage("data", "prepare data and splits", _stage_data),
    Stage("tune", "5-fold CV hyper-parameter search", _stage_tune, enabled=lambda cfg: cfg.tune.enabled),
    Stage("train", "train standard and robust models", _stage_train),
    Stage("explain", "saliency maps", _stage_explain),
    Stage("evaluate", "metrics and statistics", _stage_evaluate),
    Stage("report", "figures and HTML report", _stage_report),
)


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
        t_all = time.perf_counter()
        run_stages(cfg, run_dir, STAGES, state, force=force)
        say(f"finished in {time.perf_counter() - t_all:.1f} s")
    report = run_dir / "report.html"
    for line in summary_lines(run_dir):
        say(line)
    say(f"report: {report}")
    return report


def summary_lines(run_dir: str | Path) -> list[str]:
    """The last lines for the terminal: accuracies, per-class recall, the competence gate when it
    failed (``not comparable: <reasons>``), and the headline metric verdicts."""
    run_dir = Path(run_dir)
    lines = []
    accs = []
    for meta_path in sorted((run_dir / "models").glob("*/model.json")):
        m = ModelRecord.trained(meta_path).metrics
        strongest = m.strongest_robust()
        r = f", robust@{strongest[0]} {strongest[1]:.1%}" if strongest else ""
        if m.clean_accuracy is not None:
            accs.append(f"{meta_path.parent.name} {m.clean_accuracy:.1%}{r}")
    if accs:
        lines.append("accuracy: " + "; ".join(accs))
    path = run_dir / "metrics" / "summary.json"
    if path.exists():
        summary = Summary.load(path)
        gate = summary.gate
        if gate.recall:  # per-class test recall of every model: the competence behind the verdicts
            lines.append("recall: " + "; ".join(
                f"{m} " + " ".join(f"{c} {v:.2f}" if v is not None else f"{c} ?" for c, v in r.items())
                for m, r in gate.recall.items()))
        if summary.comparable is False:
            lines.append(f"not comparable: {'; '.join(gate.reasons or [])}")
        # Headline: the paper's two main claims for its main method (Gradient), first robust model.
        for claim in ("sharper", "on_lesion"):
            hit = summary.headline(claim, "gradient")
            if hit is not None and hit.line:
                lines.append(hit.line)
    return lines[:5]
