"""Saliency maps per second: robsal.saliency.explain (batched) vs Captum called per image.

The original code explained one image at a time (``method.attribute(img[None], ...)``)
with Captum's defaults: IG evaluated all ``n_steps`` interpolation points in one
forward pass per image, NoiseTunnel ran its ``nt_samples`` noisy copies in one pass
per image, Occlusion evaluated one window per forward pass. robsal batches the
images and the inner work together (``internal_batch_size``, ``nt_samples_batch_size``,
``perturbations_per_eval``) and, for the input-gradient methods, runs Captum on the
model's input-gradient view (``explain(fast=True)``, the default; see
``robsal.models.input_gradient``). All ways run here on the same model, the same images and
the same settings, in one process, so the printed ratios are measured in one run.

    python bench/saliency_speed.py                      # ResNet-18, 64 px, CPU
    python bench/saliency_speed.py --size 224 --n 16 --device cuda

Output: the device, the load average at start and end, and one line per method with
maps/s of robsal (``explain``), of robsal without the input-gradient kernels
("no kernels": ``explain(fast=False)`` with the parameters frozen as ``fast=True``
freezes them, so the two differ by the kernels only) and of the per-image reference
(best of ``--repeats``); the speed-up per-image time / robsal time and the kernels'
gain no-kernels time / robsal time (medians of the per-repeat ratios of the alternated
repeats) in wall time and, on CPU, in CPU time of the process (less sensitive to other
processes sharing the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
import warnings

import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

from robsal.models import build_model
from robsal.saliency import explain, scaled_occlusion_geometry


def per_image_reference(model, x, t, method, args):
    """The original code's way: Captum, one image per call, default inner batching."""
    out = []
    w, s = scaled_occlusion_geometry(x.shape[-1])
    for i in range(len(x)):
        xi, ti = x[i : i + 1], int(t[i])
        if method == "gradient":
            a = Saliency(model).attribute(xi, target=ti, abs=False)
        elif method == "integrated_gradients_uniform":
            base = torch.rand_like(xi)
            a = IntegratedGradients(model).attribute(xi, base, target=ti, n_steps=args.ig_steps)
        elif method == "smoothgrad":
            a = NoiseTunnel(Saliency(model)).attribute(
                xi, nt_type="smoothgrad", nt_samples=args.sg_samples, stdevs=0.15, target=ti, abs=False
            )
        elif method == "occlusion":
            prob = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
            a = Occlusion(prob).attribute(xi, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=0.0, target=ti)
        elif method == "gradcam":
            a = LayerGradCam(model, model.net.layer4).attribute(xi, target=ti, relu_attributions=True)
            a = LayerAttribution.interpolate(a, tuple(xi.shape[-2:]), "bilinear")
        else:
            raise ValueError(method)
        out.append(a.detach())
    return torch.cat(out)


def ours(model, x, t, method, args, fast=True):
    opts = {}
    if method.startswith("integrated"):
        opts = {"n_steps": args.ig_steps, "inner_batch": args.inner_batch}
    elif method == "smoothgrad":
        opts = {"n_samples": args.sg_samples, "noise": 0.15, "inner_batch": args.inner_batch}
    elif method == "occlusion":
        opts = {"inner_batch": args.inner_batch}
    return explain(model, x, t, method, batch_size=args.batch_size, fast=fast, **opts)


@contextlib.contextmanager
def frozen(model):
    """Parameters' ``requires_grad`` off for the block (what ``explain(fast=True)`` does
    besides the view), restored after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def without_kernels(model, x, t, method, args):
    """robsal without the input-gradient kernels: the same batching and frozen parameters."""
    with frozen(model):
        return ours(model, x, t, method, args, fast=False)


def _seconds(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def timed(fns: dict, device, repeats: int) -> dict:
    """Run every function of ``fns`` once per repeat, in a rotated order each repeat (so
    load drift on a shared machine and position effects hit all of them); return
    {name: [(wall, cpu), ...]}."""
    names = list(fns)
    out = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            out[k].append(_seconds(fns[k], device))
    return out


def _median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="image side, px")
    p.add_argument("--n", type=int, default=8, help="images")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--sg-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None, help="robsal: images per call (default all)")
    p.add_argument("--inner-batch", type=int, default=64, help="robsal: forward passes batched together (explain default: 64)")
    p.add_argument("--repeats", type=int, default=3, help="alternated timings of each way")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-plain", action="store_true", help="skip the no-kernels column")
    p.add_argument("--no-reference", action="store_true", help="skip the per-image Captum column")
    p.add_argument(
        "--methods", nargs="+", default=["gradient", "integrated_gradients_uniform", "smoothgrad", "occlusion", "gradcam"]
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    torch.manual_seed(0)
    model = build_model("resnet18", ["mel", "nv", "bkl"], image_size=args.size).to(device).eval()
    x = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.arange(args.n, device=device) % 3
    print(f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores")
    print(
        f"ResNet-18 (random weights), {args.n} images of {args.size} px; IG steps {args.ig_steps}, "
        f"SmoothGrad samples {args.sg_samples}, inner batch {args.inner_batch}; {args.repeats} alternated repeats"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    cpu = device.type == "cpu"
    ratios = [("per-image", "speed-up")] * (not args.no_reference) + [("no-kernels", "kernels")] * (not args.no_plain)
    head = f"{'method':30s} {'robsal':>8s} {'no-kern':>8s} {'per-image':>9s}"
    for _, label in ratios:
        head += f"  {label + ' wall':>13s}" + (f" {label + ' CPU':>12s}" if cpu else "")
    print("maps/s (best repeat); speed-up = per-image time / robsal time, kernels = no-kernels time / robsal time,")
    print("medians of the per-repeat ratios")
    print(head)
    for method in args.methods:
        fns = {"robsal": lambda: ours(model, x, t, method, args)}
        if not args.no_reference:
            fns["per-image"] = lambda: per_image_reference(model, x, t, method, args)
        if not args.no_plain:
            fns["no-kernels"] = lambda: without_kernels(model, x, t, method, args)
        for fn in fns.values():  # warm-up (allocator, kernels)
            fn()
        res = timed(fns, device, args.repeats)
        rate = {k: args.n / min(w for w, _ in v) for k, v in res.items()}
        nan = float("nan")
        line = f"{method:30s} {rate['robsal']:8.2f} {rate.get('no-kernels', nan):8.2f} {rate.get('per-image', nan):9.2f}"
        for other, _ in ratios:
            wall = _median([b[0] / a[0] for a, b in zip(res["robsal"], res[other])])
            line += f"  {wall:12.2f}x"
            if cpu:
                line += f" {_median([b[1] / a[1] for a, b in zip(res['robsal'], res[other])]):11.2f}x"
        print(line, flush=True)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
