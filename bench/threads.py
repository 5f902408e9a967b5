"""robsal's CPU thread defaults vs PyTorch's, on an idle machine and beside a CPU-bound process.

Three workloads, each timed in a fresh child process (OpenMP reads its wait policy once,
when torch loads it, so every setting needs its own process):

* a standard training step of ResNet-18 (64 px, batch 32, Adam),
* a PGD-7 adversarial training step (L2, eps/5 steps, same model and batch),
* an Integrated Gradients batch (8 images, 32 steps, ``robsal.saliency.explain``).

Settings: ``pytorch`` (torch imported first, no wait policy set, torch's thread count) and
``robsal`` (``import robsal`` first: ``OMP_WAIT_POLICY=PASSIVE`` if other processes keep
the CPUs busy at that moment, threads = the CPUs this process may use, :mod:`robsal.threads`). Conditions: ``idle`` and ``loaded`` (the script
starts one busy-looping competitor process per --competitors and stops it afterwards).
Prints the median time per workload, setting and condition, and the ratios
pytorch / robsal (> 1: robsal's defaults are faster) side by side from one run.

    python bench/threads.py [--reps 5] [--competitors 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import json, os, statistics, sys, time
    setting, reps = sys.argv[1], int(sys.argv[2])
    if setting == "robsal":
        import robsal  # sets OMP_WAIT_POLICY=PASSIVE before torch loads
        import torch
        from robsal.threads import set_threads
        set_threads(None)
    else:
        import torch
        import robsal
    import torchvision
    from robsal.attacks import pgd
    from robsal.saliency import explain
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.rand(32, 3, 64, 64), torch.randint(0, 3, (32,))

    def standard():
        net.train(); opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()

    def pgd7():
        net.eval(); xa = pgd(net, x, y, eps=1.14, norm="l2", steps=7)
        net.train(); opt.zero_grad(); torch.nn.functional.cross_entropy(net(xa), y).backward(); opt.step()

    def ig():
        net.eval(); explain(net, x[:8], y[:8], method="integrated_gradients_uniform", n_steps=32, seed=0)

    out = {"threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}
    for name, fn in (("standard step", standard), ("PGD-7 step", pgd7), ("IG batch", ig)):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    print(json.dumps(out))
    """
)

WORKLOADS = ("standard step", "PGD-7 step", "IG batch")


def child(setting: str, reps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "ROBSAL_THREADS", "OMP_NUM_THREADS")}
    t0 = time.perf_counter()
    cpu0 = os.times()
    proc = subprocess.run([sys.executable, "-c", CHILD, setting, str(reps)], capture_output=True, text=True,
                          env=env, check=False)
    cpu1 = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"child ({setting}) failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    res["cpu"] = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    return res


def start_competitors(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per workload (median reported)")
    ap.add_argument("--competitors", type=int, default=1, help="busy-looping processes in the loaded condition")
    args = ap.parse_args()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    print(f"CPUs available to this process: {cpus}; os.cpu_count(): {os.cpu_count()}")
    results: dict[tuple[str, str], dict] = {}
    for condition in ("idle", "loaded"):
        procs = start_competitors(args.competitors) if condition == "loaded" else []
        try:
            time.sleep(0.5 if procs else 0)
            for setting in ("pytorch", "robsal"):  # side by side, in one run
                results[(condition, setting)] = child(setting, args.reps)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    for (condition, setting), r in results.items():
        print(f"{condition:6s} {setting:8s} threads={r['threads']} OMP_WAIT_POLICY={r['policy']} "
              f"child wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s")
    print()
    print(f"{'workload':14s} {'condition':9s} {'pytorch s':>10s} {'robsal s':>9s} {'pytorch/robsal':>15s}")
    for condition in ("idle", "loaded"):
        for w in WORKLOADS:
            a, b = results[(condition, "pytorch")][w], results[(condition, "robsal")][w]
            print(f"{w:14s} {condition:9s} {a:10.3f} {b:9.3f} {a / b:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
