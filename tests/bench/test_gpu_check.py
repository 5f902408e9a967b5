"""bench/gpu_check.py as a CPU smoke test: every row of its table is produced and the fast
training step agrees with the fp32 eager one (on the CPU both are fp32: the agreement must be exact
up to float order)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_gpu_check_runs_on_the_cpu_with_tiny_sizes():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], capture_output=True,
                          text=True, timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for row in ("tiny main job end to end", "exit 0, report written", "fast PGD-7 step", "agree",
                "PGD-7 training at 32 px, images/s", "integrated_gradients_uniform at 32 px, maps/s",
                "smoothgrad at 32 px, maps/s", "peak memory", "paper preset training, extrapolated"):
        assert row in out, row
    assert "DISAGREE" not in out
    assert "not GPU numbers" in out and "compile skipped" in out  # it says what it measured where
