"""``robsal evaluate --run RUN``: metrics and statistics of a run's saliency maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from robsal.metrics.run import evaluate_run
from robsal.rundir import Summary


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser(
        "evaluate",
        help="measure the saliency maps of a run (localisation, sharpness, faithfulness, sanity, stability)",
        description="Score every RUN/saliency/<model>/<method>.npz and write RUN/metrics/per_image.csv, "
        "summary.csv, summary.json and plots under RUN/figures/.",
    )
    p.add_argument("--run", required=True, help="run directory (made by robsal run / train / explain)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the run's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:

    out = evaluate_run(Path(args.run), device=args.device, progress=not args.no_progress)
    summary = Summary.load(out / "summary.json")
    print(f"wrote {out}/per_image.csv, summary.csv, summary.json ({summary.seconds} s)")
    for v in summary.verdicts:
        print(v.line)
    for note in summary.notes or []:
        print(f"note: {note}")
    return 0
