"""One check of robsal's accelerator paths, with one table at the end.

Measures, on ``--device`` (default ``cuda``):

1. the ``tiny`` main job end to end (``robsal run --config tiny``): exit code and wall time;
2. the fast PGD-7 training step (bf16 autocast, channels_last, ``torch.compile``: what the
   ``paper`` preset turns on) against the fp32 eager one, from the same weights, batch and
   random start: relative difference of the adversarial loss, cosine of the weight
   gradients, and a short run of a few epochs whose loss curves must agree;
3. PGD-7 adversarial-training throughput (images/s) of robsal's loop vs a loop around
   ``torchattacks.PGDL2`` vs the MadryLab ``robustness`` library's attacker (CUDA only);
4. saliency maps/s of ``robsal.saliency.explain`` vs Captum called per image, for IG and
   SmoothGrad;
5. peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: max RSS);
6. the wall time of the ``paper`` preset's training, extrapolated from (3).

``--tiny`` shrinks every size (32 px, few images) so that the script runs as a smoke test on
the CPU (``python bench/gpu_check.py --device cpu --tiny``, part of the test suite); bf16
autocast is CUDA-only in robsal and ``torch.compile`` is skipped on the CPU unless
``--compile`` is given, and the table says so. Numbers from a ``--tiny`` or CPU run say
nothing about GPU speed.

    python bench/gpu_check.py                      # one GPU, under 8 minutes
    python bench/gpu_check.py --device cpu --tiny  # smoke test
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent

# tolerances of the fast step against the fp32 eager one (bf16 has an 8-bit mantissa)
LOSS_RTOL = 0.05  # adversarial loss of one step
GRAD_COS_MIN = 0.95  # cosine of the weight gradients
CURVE_RTOL = 0.10  # every epoch of the short run


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main_job(device: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="robsal-gpucheck-")) / "run"
    cmd = [sys.executable, "-m", "robsal", "run", "--config", "tiny", "--device", device, "--out", str(out),
           "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall": wall, "tail": (proc.stdout + proc.stderr)[-600:],
            "report": (out / "report.html").exists()}


def fast_step_agreement(device: torch.device, size: int, batch: int, epochs: int, images: int, use_compile: bool) -> dict:
    from robsal.attacks.pgd import random_start_delta
    from robsal.models import build_model
    from robsal.training.loop import Adversary, autocast, compile_model, train_epoch

    ts = _bench_module("train_speed")
    torch.manual_seed(0)
    base = build_model("resnet18", list("abc"), image_size=size).to(device)
    eps = 4.0 * size / 224
    adversary = Adversary(eps, "l2", 7, eps / 5, True)
    bf16 = device.type == "cuda"
    channels_last = device.type == "cuda"

    def variant(fast: bool):
        m = copy.deepcopy(base)
        if fast and channels_last:
            m = m.to(memory_format=torch.channels_last)
        run = compile_model(m, device) if (fast and use_compile) else m
        return m, run

    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % 3
    start = random_start_delta(tuple(x.shape), eps, "l2", torch.Generator(device=device).manual_seed(0), device=device)
    res = {}
    for fast in (False, True):
        m, run = variant(fast)
        with autocast(device, fast and bf16):
            run.eval()
            x_adv = adversary(run, x, y, start=start)
            run.train()
            loss = F.cross_entropy(run(x_adv).float(), y)
        m.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.cat([p.grad.flatten().double() for p in m.parameters() if p.grad is not None])
        res[fast] = (float(loss.detach()), grad)
    (l0, g0), (l1, g1) = res[False], res[True]
    step = {"loss_fp32": l0, "loss_fast": l1, "loss_rel": abs(l1 - l0) / max(abs(l0), 1e-12),
            "grad_cos": float(g0 @ g1 / (g0.norm() * g1.norm()).clamp_min(1e-300))}
    data = ts.make_data(images, size)
    idx = np.arange(images)
    curves = {}
    for fast in (False, True):
        m, run = variant(fast)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        curves[fast] = [
            train_epoch(run, data, idx, opt, batch_size=batch, seed=0, epoch=e, device=device, adversary=adversary,
                        amp=fast and bf16, progress=False, attack_model=run)["train_loss"]
            for e in range(epochs)
        ]
    step["curve_fp32"], step["curve_fast"] = curves[False], curves[True]
    step["curve_rel"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves[False], curves[True]))
    step["bf16"], step["channels_last"], step["compile"] = bf16, channels_last, use_compile
    return step


def pgd_throughput(device: torch.device, size: int, images: int, batch: int, repeats: int) -> dict:
    from robsal.config import AugmentConfig
    from robsal.data import Augmenter
    from robsal.models import build_model
    from robsal.training.loop import Adversary, train_epoch

    ts = _bench_module("train_speed")
    data = ts.make_data(images, size)
    idx = np.arange(images)
    eps = 4.0 * size / 224
    torch.manual_seed(0)
    models = {k: build_model("resnet18", list("abc"), image_size=size).to(device) for k in ("robsal", "torchattacks", "robustness")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    adversary = Adversary(eps, "l2", 7, eps / 5, True)
    augment = Augmenter(AugmentConfig())
    madry = ts.madry_attack(models["robustness"], eps, device)
    batches = lambda: (data.batch(idx[b : b + batch], device) for b in range(0, images, batch))  # noqa: E731
    fns = {
        "robsal": lambda r: train_epoch(models["robsal"], data, idx, opts["robsal"], batch_size=batch, seed=0, epoch=r,
                                        device=device, adversary=adversary, augment=augment, progress=False)["epoch_seconds"],
        "torchattacks": lambda r: ts.reference_epoch(models["torchattacks"], data, idx, opts["torchattacks"],
                                                     batch_size=batch, eps=eps, device=device, seed=r),
    }
    if madry is not None:
        fns["robustness"] = lambda r: ts.loader_epoch(models["robustness"], batches(), opts["robustness"], madry, device=device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):  # round 0 warms up (cuDNN autotuning, allocator)
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn(r)
            _sync(device)
            if r:
                times[k].append(time.perf_counter() - t0)
    std_model = models["robsal"]
    std_opt = torch.optim.Adam(std_model.parameters(), lr=1e-4)
    std = []
    for r in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        train_epoch(std_model, data, idx, std_opt, batch_size=batch, seed=0, epoch=r, device=device, augment=augment,
                    progress=False)
        _sync(device)
        if r:
            std.append(time.perf_counter() - t0)
    out = {k: images / statistics.median(v) for k, v in times.items()}
    out["standard"] = images / statistics.median(std)
    if madry is None:
        out["robustness"] = None
    return out


def saliency_throughput(device: torch.device, size: int, n: int, ig_steps: int, sg_samples: int) -> dict:
    from robsal.models import build_model

    ss = _bench_module("saliency_speed")
    torch.manual_seed(0)
    model = build_model("resnet18", list("abc"), image_size=size).to(device).eval()
    x = torch.rand(n, 3, size, size, device=device)
    t = torch.arange(n, device=device) % 3
    args = argparse.Namespace(ig_steps=ig_steps, sg_samples=sg_samples, inner_batch=64, batch_size=None)
    out = {}
    for method in ("integrated_gradients_uniform", "smoothgrad"):
        for who, fn in (("robsal", lambda: ss.ours(model, x, t, method, args)),
                        ("captum per image", lambda: ss.per_image_reference(model, x, t, method, args))):
            fn()  # warm-up
            wall, _ = ss._seconds(fn, device)
            out[(method, who)] = n / wall
    return out


def paper_extrapolation(throughput: dict) -> dict:
    """Training time of the ``paper`` preset from measured images/s (tuning and evaluation excluded)."""
    from robsal.config import load_config

    cfg = load_config("paper")
    n_train = cfg.data.train_per_class * len(cfg.data.classes)
    epochs = cfg.train.phase1.epochs + cfg.train.phase2.epochs
    std = epochs * n_train / throughput["standard"]
    rob = epochs * n_train / throughput["robsal"]
    n_robust = sum(1 for m in cfg.models if m.eps > 0)
    n_std = len(cfg.models) - n_robust
    return {"n_train": n_train, "epochs": epochs, "seconds": n_std * std + n_robust * rob}


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU, max RSS of this process)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes: a smoke test, not a measurement")
    ap.add_argument("--compile", action="store_true", help="also torch.compile on the CPU (needs a C++ compiler; slow)")
    ap.add_argument("--skip-main-job", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    from robsal.utils import resolve_device

    device = resolve_device(args.device)
    size, images, batch, repeats = (32, 16, 8, 1) if args.tiny else (224, 256, 32, 2)
    sal_n, ig_steps, sg = (2, 4, 4) if args.tiny else (16, 50, 50)
    use_compile = device.type == "cuda" or args.compile
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}); torch {torch.__version__}; {'TINY smoke sizes' if args.tiny else 'full sizes'}",
          flush=True)
    t_all = time.perf_counter()
    rows: list[tuple[str, str]] = []
    ok = True
    if not args.skip_main_job:
        mj = main_job(str(device))
        ok &= mj["rc"] == 0 and mj["report"]
        rows.append(("tiny main job end to end", f"exit {mj['rc']}, report {'written' if mj['report'] else 'MISSING'}, "
                                                 f"{mj['wall']:.1f} s"))
        if mj["rc"] != 0:
            print(mj["tail"], file=sys.stderr)
    st = fast_step_agreement(device, size, batch, epochs=3, images=images, use_compile=use_compile)
    what = ", ".join(k for k in ("bf16", "channels_last", "compile") if st[k]) or "nothing (fp32 eager on both sides)"
    agree = st["loss_rel"] <= LOSS_RTOL and st["grad_cos"] >= GRAD_COS_MIN and st["curve_rel"] <= CURVE_RTOL
    ok &= agree
    rows.append((f"fast PGD-7 step ({what}) vs fp32 eager",
                 f"loss {st['loss_fast']:.4f} vs {st['loss_fp32']:.4f} (rel {st['loss_rel']:.3f} <= {LOSS_RTOL}), "
                 f"grad cosine {st['grad_cos']:.4f} (>= {GRAD_COS_MIN}): {'agree' if agree else 'DISAGREE'}"))
    rows.append(("short run, loss per epoch fast / fp32",
                 " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(st["curve_fast"], st["curve_fp32"]))
                 + f" (max rel {st['curve_rel']:.3f} <= {CURVE_RTOL})"))
    thr = pgd_throughput(device, size, images, batch, repeats)
    rob = thr["robustness"]
    rows.append((f"PGD-7 training at {size} px, images/s",
                 f"robsal {thr['robsal']:.1f}, torchattacks loop {thr['torchattacks']:.1f} "
                 f"({thr['robsal'] / thr['torchattacks']:.2f}x), robustness "
                 + (f"{rob:.1f} ({thr['robsal'] / rob:.2f}x)" if rob else "not run (needs CUDA / not installed)")
                 + f"; standard training {thr['standard']:.1f}"))
    sal = saliency_throughput(device, size, sal_n, ig_steps, sg)
    for method in ("integrated_gradients_uniform", "smoothgrad"):
        a, b = sal[(method, "robsal")], sal[(method, "captum per image")]
        rows.append((f"{method} at {size} px, maps/s", f"robsal {a:.2f}, Captum per image {b:.2f} ({a / b:.2f}x)"))
    rows.append(("peak memory", peak_memory(device)))
    ex = paper_extrapolation(thr)
    rows.append(("paper preset training, extrapolated",
                 f"{ex['seconds'] / 3600:.2f} h ({ex['epochs']} epochs x {ex['n_train']} images per model, "
                 f"phase 1 at full cost, from the {size} px throughput; tuning and evaluation not included)"))
    rows.append(("total time of this check", f"{time.perf_counter() - t_all:.0f} s"))
    w = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if args.tiny or device.type != "cuda":
        print("\nmeasured on", name, "with", "smoke-test sizes" if args.tiny else "full sizes",
              "- not GPU numbers; bf16 autocast is CUDA-only," if device.type != "cuda" else "",
              "compile " + ("on" if use_compile else "skipped (--compile to include it)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
