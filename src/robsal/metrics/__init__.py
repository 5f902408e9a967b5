"""Metrics of saliency maps and their statistics (issue 5).

Public: :func:`evaluate_run` (writes RUN/metrics/ and RUN/figures/), and the per-image
metric modules :mod:`localisation`, :mod:`complexity`, :mod:`alignment`,
:mod:`faithfulness`, :mod:`sanity`, :mod:`stability`, :mod:`stats`.
"""

from robsal.metrics.run import evaluate_run

__all__ = ["evaluate_run"]
