"""Sweeps over adversary power and training seed (paper Appendix C.2-C.3, Figures 10-11).

``robsal sweep --config C --grid "eps=0,1,2,4,7;seed=0,1,2" --out SWEEP`` trains one model
per grid cell (eps = 0 is standard training), explains and evaluates all of them on the
same test images, and aggregates.

Design: the sweep directory is one run directory (DESIGN.md contract) whose models are
the cells, named ``eps<eps>_seed<seed>`` (``eps4_seed1``). So every cell is trained on
the same data and splits (one ``SWEEP/splits.csv``), with the same hyper-parameters and,
for one seed, the same initial weights and data order (:mod:`robsal.training`); only eps
and seed differ. The run's ``config.yaml`` is the base config with ``models`` replaced
by the cells. Then, in order (:func:`run_sweep`, ``runner.py``):

1. data (``robsal.data.prepare``) and, when ``tune.enabled``, the CV search once for all
   cells (the paper tunes with standard training and reuses the result);
2. training of the unfinished cells by an executor (``executors.py``): cell by cell in this
   process, or one Ray task per cell (``--ray-address``). A finished cell (``model.json``
   with metrics and the same training fingerprint) is skipped, so a re-run or a killed
   sweep resumes without redoing finished cells. A cell that raises is reported and
   retried once; the other cells go on. ``SWEEP/sweep/cells.json`` records each cell's
   state, attempts and errors;
3. saliency maps of every finished cell on one image list (``robsal.saliency.explain_run``;
   images: test images classified correctly by every cell, the paper's rule, or
   ``--images all``: the first ``saliency.n_per_class`` per class of a seeded draw);
4. metrics (``robsal.metrics.evaluate_run``), which also measures seed stability:
   cells with the same eps differ only in their seed;
5. aggregates (always recomputed, cheap; ``tables.py``, ``figures.py``):

   ``SWEEP/sweep/table.csv|json``  long table, one row per (section, eps, method, metric):
       section ``accuracy``: clean/balanced accuracy and robust accuracy at each evaluation
       eps, mean over seeds with sd/min/max over seeds; section ``saliency``: every
       per-image metric, mean over images of the per-image mean over seeds, with a
       percentile-bootstrap CI over images and the sd of the per-seed means; section
       ``stability``: mean pairwise Spearman and SSIM of the maps of the same images
       across seeds (Figure 10), with a bootstrap CI over images.
   ``SWEEP/sweep/optimal_eps.csv|json``  per-image optimal eps (Appendix C.3,
       :mod:`robsal.experiments.per_image_eps`)
   ``SWEEP/figures/sweep_accuracy``, ``sweep_metrics_<method>``, ``sweep_stability``,
       ``sweep_grid_<method>`` (Figure 11: rows = images, columns = eps),
       ``sweep_seeds_<method>_eps<eps>`` (Figure 10: columns = seeds),
       ``sweep_optimal_eps`` (histogram), each ``.png`` and ``.pdf``.

Steps 3-4 are recorded in ``SWEEP/stages.json`` with a fingerprint of the config and the
list of finished cells, and redone only when either changes (``ledger.py``). The grid of an
existing sweep may grow (same config otherwise): old cells are kept, new ones trained.
"""

from robsal.experiments.sweep.executors import (
    CellStatus,
    Executor,
    LocalExecutor,
    RayExecutor,
    train_cell,
    write_status,
)
from robsal.experiments.sweep.figures import PLOT_METRICS, _spread, write_figures
from robsal.experiments.sweep.grid import (
    GRID_KEYS,
    SWEEP_SUBDIR,
    Cell,
    cell_name,
    cells_of,
    grid_cells,
    init_sweep,
    make_cells,
    parse_grid,
    sweep_config,
)
from robsal.experiments.sweep.ledger import cell_complete
from robsal.experiments.sweep.runner import SweepResult, any_images, make_executor, run_sweep
from robsal.experiments.sweep.tables import (
    TABLE_COLUMNS,
    OptimumSpec,
    accuracy_rows,
    aggregate,
    read_table,
    saliency_rows,
    stability_rows,
    summary_lines,
    sweep_gates,
)

__all__ = [
    "GRID_KEYS", "PLOT_METRICS", "SWEEP_SUBDIR", "TABLE_COLUMNS",
    "Cell", "CellStatus", "Executor", "LocalExecutor", "OptimumSpec", "RayExecutor", "SweepResult",
    "accuracy_rows", "aggregate", "any_images", "cell_complete", "cell_name", "cells_of", "grid_cells",
    "init_sweep", "make_cells", "make_executor", "parse_grid", "read_table", "run_sweep", "saliency_rows",
    "stability_rows", "summary_lines", "sweep_config", "sweep_gates", "train_cell", "write_figures",
    "write_status",
    "_spread",  # used by robsal.experiments.finetune (image choice of its figures)
]
