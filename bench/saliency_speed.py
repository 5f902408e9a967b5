"""Saliency maps per second: robsal.saliency.explain (batched) vs Captum called per image.

The original code explained one image at a time (``method.attribute(img[None], ...)``)
with Captum's defaults: IG evaluated all ``n_steps`` interpolation points in one
forward pass per image, NoiseTunnel ran its ``nt_samples`` noisy copies in one pass
per image, Occlusion evaluated one window per forward pass. robsal batches the
images and the inner work together (``internal_batch_size``, ``nt_samples_batch_size``,
``perturbations_per_eval``). Both run here on the same model, the same images and the
same settings, in one process, so the printed ratios are measured in one run.

    python bench/saliency_speed.py                      # ResNet-18, 64 px, CPU
    python bench/saliency_speed.py --size 224 --n 16 --device cuda

Output: one line per method with maps/s for both (best of ``--repeats``) and the
speed-up robsal / per-image (median over the alternated repeats).
"""

from __future__ import annotations

import argparse
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


def ours(model, x, t, method, args):
    opts = {}
    if method.startswith("integrated"):
        opts = {"n_steps": args.ig_steps, "inner_batch": args.inner_batch}
    elif method == "smoothgrad":
        opts = {"n_samples": args.sg_samples, "noise": 0.15, "inner_batch": args.inner_batch}
    elif method == "occlusion":
        opts = {"inner_batch": args.inner_batch}
    return explain(model, x, t, method, batch_size=args.batch_size, **opts)


def _seconds(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed_pair(fn_a, fn_b, device, repeats):
    """Alternate a and b ``repeats`` times (so load drift on a shared machine hits both);
    return (best a, best b, median of the per-repeat ratios b / a)."""
    a, b = [], []
    for _ in range(repeats):
        a.append(_seconds(fn_a, device))
        b.append(_seconds(fn_b, device))
    ratios = sorted(y / x for x, y in zip(a, b))
    return min(a), min(b), ratios[len(ratios) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="image side, px")
    p.add_argument("--n", type=int, default=8, help="images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--sg-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None, help="robsal: images per call (default all)")
    p.add_argument("--inner-batch", type=int, default=64, help="robsal: forward passes batched together (explain default: 64)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--methods", nargs="+", default=["gradient", "integrated_gradients_uniform", "smoothgrad", "occlusion", "gradcam"]
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet18", ["mel", "nv", "bkl"], image_size=args.size).to(device).eval()
    x = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.arange(args.n, device=device) % 3
    print(
        f"ResNet-18, {args.n} images of {args.size} px on {device} ({torch.get_num_threads()} threads); "
        f"IG steps {args.ig_steps}, SmoothGrad samples {args.sg_samples}; {args.repeats} alternated repeats"
    )
    print(f"{'method':30s} {'robsal maps/s':>14s} {'per-image maps/s':>17s} {'speed-up':>8s}")
    for method in args.methods:
        ours(model, x[:2], t[:2], method, args)  # warm-up (allocator, kernels)
        a, b, ratio = timed_pair(
            lambda: ours(model, x, t, method, args),
            lambda: per_image_reference(model, x, t, method, args),
            device,
            args.repeats,
        )
        print(f"{method:30s} {args.n / a:14.2f} {args.n / b:17.2f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
