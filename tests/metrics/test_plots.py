"""The metrics figures are drawn without pyplot: the caller's matplotlib backend and figures stay as they were."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_plots_leave_the_callers_backend_and_figures_alone(tmp_path):
    # a fresh interpreter, so the backend chosen here is the first and only one
    code = textwrap.dedent(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        from robsal.metrics import plots

        rows = [("i%d" % i, model, "gradient", "gini", v)
                for i, v in enumerate(np.linspace(0.2, 0.8, 6)) for model in ("standard", "control")]
        per_image = pd.DataFrame(rows, columns=["image_id", "model", "method", "metric", "value"])
        curves = {{"standard": {{"gradient": {{"deletion": [1.0, 0.5, 0.1], "deletion_lerf": [1.0, 0.9, 0.8],
                                               "insertion": [0.1, 0.6, 1.0]}}}}}}
        written = plots.write_plots({str(tmp_path)!r}, per_image, curves, {{}})
        print(matplotlib.get_backend(), plt.get_fignums(), sorted(p.name for p in written))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")[-2]
    assert out == "svg [] ['deletion_curves.png', 'metrics_sharpness.png']"
    for name in ("deletion_curves.png", "metrics_sharpness.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 5000
