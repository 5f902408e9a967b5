"""Wall time and peak memory of the main job (``robsal run``) on this machine, and what it found.

Runs ``robsal run --config PRESET`` in a child process into a fresh temporary run
directory and prints its wall time and peak resident memory (the child's maximum
RSS, as ``/usr/bin/time -v`` would report it), the time of every stage, then from the
run directory: clean accuracy and per-class test recall of every model, the explained
images per class, the Grad-CAM grid, the competence gate and the verdict table.

    python bench/main_job.py --config quick [--keep DIR] [--competitors K] [--pytorch-defaults]

``--competitors K`` starts K busy-looping processes beside the job (a shared machine) and
stops them afterwards; ``--pytorch-defaults`` runs the job with PyTorch's OpenMP wait policy
instead of robsal's choice (``OMP_WAIT_POLICY`` set empty, which the runtime ignores).
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
    ap.add_argument("--competitors", type=int, default=0, help="busy-looping processes beside the job")
    ap.add_argument("--pytorch-defaults", action="store_true", help="PyTorch's wait policy, not robsal's")
    args = ap.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robsal-bench-")) / "run"
    cmd = [sys.executable, "-m", "robsal", "run", "--config", args.config, "--out", str(out), "--no-progress"]
    for o in args.overrides:
        cmd += ["--set", o]
    env = dict(os.environ)
    if args.pytorch_defaults:
        env["OMP_WAIT_POLICY"] = ""  # set, so robsal keeps it; empty, so OpenMP uses its default
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
    try:
        time.sleep(0.5 if hogs else 0)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, env=env)
        wall = time.perf_counter() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"command: {' '.join(cmd)}")
    print(f"beside it: {args.competitors} busy-looping process(es); OpenMP wait policy: "
          f"{'PyTorch default' if args.pytorch_defaults else 'robsal (passive if the CPUs were busy at start)'}")
    print(f"exit code: {proc.returncode}")
    print(f"wall time: {wall:.1f} s ({wall / 60:.2f} min)")
    print(f"peak memory (max RSS of the child): {peak_kib / 1024**2:.2f} GiB")
    print(f"report: {out / 'report.html'}")
    if proc.returncode == 0:
        describe(out)
    return proc.returncode


def describe(run: Path) -> None:
    """What the run found, from its files (model.json, stages.json, saliency, summary.json)."""
    import json

    import numpy as np

    stages = json.loads((run / "stages.json").read_text()) if (run / "stages.json").exists() else {}
    stages = stages.get("stages", stages)
    print("stages (s): " + ", ".join(f"{k} {v.get('seconds', '?')}" for k, v in stages.items() if isinstance(v, dict)))
    for meta_path in sorted((run / "models").glob("*/model.json")):
        meta = json.loads(meta_path.read_text())
        m = meta.get("metrics", {})
        rec = ", ".join(f"{c} {v:.2f}" for c, v in (m.get("per_class_accuracy") or {}).items())
        rob = ", ".join(f"eps {k}: {v:.1%}" for k, v in (m.get("robust_accuracy") or {}).items())
        print(f"{meta_path.parent.name}: eps_l2 {meta.get('eps_l2', 0):.3f}, train {meta.get('train_seconds', 0):.0f} s, "
              f"clean {m.get('clean_accuracy', float('nan')):.1%}, balanced {m.get('balanced_accuracy', float('nan')):.1%}; "
              f"recall {rec}; robust {rob}")
    sel = run / "saliency" / "selection.json"
    if sel.exists():
        print(f"explained images per class: {json.loads(sel.read_text()).get('selected')}")
    models = sorted((run / "models").glob("*/model.safetensors"))
    if models:
        import torch

        from robsal.config import load_run_config
        from robsal.models import load
        from robsal.saliency.methods import resolve_layer

        cfg = load_run_config(run)
        net = load(models[0].parent)
        layer = resolve_layer(net, cfg.saliency.gradcam_layer)
        shape = {}
        def grab(mod, inp, out):  # noqa: ANN001 - a forward hook that returns None keeps the output
            shape["hw"] = tuple(out.shape[-2:])

        hook = layer.register_forward_hook(grab)
        with torch.no_grad():
            net(torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size))
        hook.remove()
        print(f"Grad-CAM on {cfg.saliency.gradcam_layer or 'the default layer (net.layer4)'}: "
              f"{shape['hw'][0]}x{shape['hw'][1]} cells at {cfg.data.image_size} px")
    summary = run / "metrics" / "summary.json"
    if summary.exists():
        doc = json.loads(summary.read_text())
        print(f"comparable: {doc.get('comparable')}; gate reasons: {(doc.get('gate') or {}).get('reasons')}")
        print(f"{'claim':10} {'method':30} verdict")
        for v in doc.get("verdicts", []):
            print(f"{v.get('claim', ''):10} {v.get('robust', '') + '/' + v.get('method', ''):30} {v.get('verdict')}")


if __name__ == "__main__":
    sys.exit(main())
