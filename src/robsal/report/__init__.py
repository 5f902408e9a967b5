"""HTML report of a run: ``build_report(run_dir) -> RUN/report.html`` (issue 6)."""

from robsal.report.html import build_report

__all__ = ["build_report"]
