"""Wall time and peak memory of the main job (``robsal run``) on this machine.

Runs ``robsal run --config PRESET`` in a child process into a fresh temporary run
directory and prints its wall time and peak resident memory (the child's maximum
RSS, as ``/usr/bin/time -v`` would report it).

    python bench/main_job.py --config quick [--threads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quick")
    ap.add_argument("--keep", default=None, help="run directory to keep (default: a temporary one)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robsal-bench-")) / "run"
    cmd = [sys.executable, "-m", "robsal", "run", "--config", args.config, "--out", str(out), "--no-progress"]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"command: {' '.join(cmd)}")
    print(f"exit code: {proc.returncode}")
    print(f"wall time: {wall:.1f} s ({wall / 60:.2f} min)")
    print(f"peak memory (max RSS of the child): {peak_kib / 1024**2:.2f} GiB")
    print(f"report: {out / 'report.html'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
