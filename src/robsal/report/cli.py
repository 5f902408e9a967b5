"""``robsal report --run RUN``: (re)build RUN/report.html from whatever the run holds."""

from __future__ import annotations

import argparse


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser(
        "report",
        help="write RUN/report.html from a run directory (works on partial runs)",
        description="Build the HTML report of a run directory. Parts the run does not have yet "
        "(e.g. saliency before `robsal explain`) are listed as missing.",
    )
    p.add_argument("--run", "--out", dest="run", required=True, metavar="RUN", help="the run directory")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--embed", dest="embed", action="store_true", default=None,
                       help="embed every picture in report.html (one self-contained file)")
    group.add_argument("--files", dest="embed", action="store_false",
                       help="write pictures to RUN/report_files/ beside the report")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from robsal.report import build_report

    path = build_report(args.run, embed=args.embed)
    print(f"report: {path}")
    return 0
