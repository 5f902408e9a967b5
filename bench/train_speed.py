"""Adversarial-training speed, measured in one run on the same data and model.

Prints
  (a) adversarial (PGD-7) / standard epoch-time ratio of robsal's training loop
      (arithmetic limit ~5.7x: 7 x (forward + input-only backward) + 1 training step,
      against 1 training step; target <= 6.0x on CPU);
  (b) robsal adversarial-training throughput / a reference loop that builds its
      adversarial examples with ``torchattacks.PGDL2`` (target: >= 1.0, not slower).

Epochs of the three loops are interleaved and repeated; the median epoch time of
each is reported (the CPU is often shared, so single epochs are noisy).

    python bench/train_speed.py [--size 64] [--images 64] [--batch 16] [--repeats 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
import torchattacks
from torch.nn import functional as F

from robsal.data import PreparedData
from robsal.models import build_model
from robsal.training.loop import Adversary, train_epoch
from robsal.utils import resolve_device


def make_data(n: int, size: int, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 3
    rows = [{"image_id": f"b{i}", "lesion_id": f"b{i}", "label": "abc"[labels[i]], "split": "train", "fold": 1}
            for i in range(n)]
    return PreparedData(images, labels, list("abc"), pd.DataFrame(rows))


def reference_epoch(model, data, idx, optimizer, *, batch_size, eps, device, seed) -> float:
    """A plain adversarial-training epoch around torchattacks.PGDL2 (eval-mode attack, then update)."""
    atk = torchattacks.PGDL2(model, eps=eps, alpha=eps / 5, steps=7, random_start=True)
    g = torch.Generator().manual_seed(seed)
    perm = np.asarray(idx)[torch.randperm(len(idx), generator=g).numpy()]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for b in range(0, len(perm), batch_size):
        x, y = data.batch(perm[b : b + batch_size], device)
        x_adv = atk(x, y)  # torchattacks switches the model to eval and back
        model.train()
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image side, px (quick preset: 64)")
    ap.add_argument("--images", type=int, default=64, help="training images per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="epochs per loop (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = make_data(args.images, args.size)
    idx = np.arange(args.images)
    eps = 4.0 * args.size / 224  # the paper's eps=4 at this input size
    torch.manual_seed(0)
    models = {k: build_model(args.arch, list("abc"), image_size=args.size).to(device) for k in ("std", "adv", "ref")}
    for m in models.values():
        m.load_state_dict(models["std"].state_dict())
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    adversary = Adversary(eps, "l2", 7, eps / 5, True)
    times: dict[str, list[float]] = {"std": [], "adv": [], "ref": []}
    for r in range(args.repeats + 1):  # the first round warms up and is discarded
        s = train_epoch(models["std"], data, idx, opts["std"], batch_size=args.batch, seed=0, epoch=r,
                        device=device, progress=False)["epoch_seconds"]
        a = train_epoch(models["adv"], data, idx, opts["adv"], batch_size=args.batch, seed=0, epoch=r,
                        device=device, adversary=adversary, progress=False)["epoch_seconds"]
        f = reference_epoch(models["ref"], data, idx, opts["ref"], batch_size=args.batch, eps=eps, device=device, seed=r)
        if r > 0:
            times["std"].append(s)
            times["adv"].append(a)
            times["ref"].append(f)
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: standard {s:.2f} s, robsal PGD-7 {a:.2f} s, "
              f"torchattacks PGD-7 {f:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.arch} {args.size}px, {args.images} images/epoch, batch {args.batch}, "
          f"device {device}, {torch.get_num_threads()} thread(s), eps_l2 {eps:.3f}, median of {args.repeats}")
    print(f"epoch seconds: standard {med['std']:.2f}, robsal adversarial {med['adv']:.2f}, "
          f"torchattacks reference {med['ref']:.2f}")
    print(f"(a) adversarial / standard epoch time: {med['adv'] / med['std']:.2f}x (limit ~5.7x, target <= 6.0x)")
    print(f"(b) robsal / torchattacks adversarial throughput: {med['ref'] / med['adv']:.2f}x (target >= 1.0)")


if __name__ == "__main__":
    main()
