"""Adversarial-training speed, measured in one run on the same data and model.

Prints
  (a) adversarial (PGD-7) / standard epoch-time ratio of robsal's training loop
      (arithmetic limit ~5.7x: 7 x (forward + input-only backward) + 1 training step,
      against 1 training step; target <= 6.0x on CPU);
  (b) robsal adversarial-training throughput / a reference loop that builds its
      adversarial examples with ``torchattacks.PGDL2`` (target: >= 1.0, not slower);
  (c) the same against a reference loop the way such code is usually written: a
      ``DataLoader`` over a dataset that applies the paper's augmentations per sample
      with ``torchvision.transforms.v2`` (flips, colour jitter, affine + rotation),
      then ``torchattacks.PGDL2``;
  (d) robsal / the MadryLab ``robustness`` library's ``Attacker`` (L2, 7 steps of
      eps/5, random start), when ``robustness`` imports on this Python (it is not a
      dependency: ``pip install robustness`` plus its imports dill, cox, tensorboardX,
      GPUtil; the script says when it is absent). GPU only: the library's attacker
      moves its input to CUDA unconditionally.

All adversarial loops use augmentation (robsal's batched on-device ``Augmenter`` in
robsal's loop; none in (b) so that it isolates the attack; per-sample transforms in
(c) and (d)). Epochs of the loops are interleaved and repeated; the median epoch time
of each is reported (the CPU is often shared, so single epochs are noisy).

``--kernels`` measures instead what the CPU input-gradient kernels
(``robsal.models.input_gradient``) buy the main job's PGD-7 training step: robsal's
adversarial epoch with the kernels (``pgd(fast=True)``, what training uses) and without
(``pgd(fast=False)``: the same attack, parameters frozen the same way), plus the standard
epoch for scale, in a rotated order each round, wall and CPU time.

    python bench/train_speed.py [--size 64] [--images 64] [--batch 16] [--repeats 3] [--threads 1] [--device cpu]
    python bench/train_speed.py --kernels --repeats 6
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

from torchvision.transforms import v2

from robsal.attacks import pgd
from robsal.config import AugmentConfig
from robsal.data import Augmenter, PreparedData
from robsal.models import build_model
from robsal.training.loop import Adversary, train_epoch
from robsal.utils import resolve_device


class PlainAdversary(Adversary):
    """The training loop's adversary with the input-gradient kernels off (``pgd(fast=False)``)."""

    def __call__(self, model, x, y, generator=None, start=None):
        return pgd(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   random_start=self.random_start, generator=generator, start=start, fast=False)


def _timed(fn) -> tuple[float, float]:
    """(wall seconds as ``fn`` returns them, CPU seconds of this process) of one call."""
    c0 = time.process_time()
    wall = fn()
    return wall, time.process_time() - c0


def kernel_comparison(args, device, data, idx, eps) -> None:
    """PGD-7 training epochs with and without the input-gradient kernels, alternated."""
    torch.manual_seed(0)
    models = {k: build_model(args.arch, list("abc"), image_size=args.size).to(device)
              for k in ("std", "kernels", "no-kernels")}
    for m in models.values():
        m.load_state_dict(models["std"].state_dict())
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    adversaries = {"std": None, "kernels": Adversary(eps, "l2", 7, eps / 5, True),
                   "no-kernels": PlainAdversary(eps, "l2", 7, eps / 5, True)}
    augment = Augmenter(AugmentConfig())
    names = list(models)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(args.repeats + 1):  # the first round warms up and is discarded
        order = names[r % len(names):] + names[:r % len(names)]
        got = {k: _timed(lambda k=k: train_epoch(
            models[k], data, idx, opts[k], batch_size=args.batch, seed=0, epoch=r, device=device,
            adversary=adversaries[k], augment=augment, progress=False)["epoch_seconds"]) for k in order}
        if r > 0:
            for k, v in got.items():
                res[k].append(v)
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(
            f"{k} {got[k][0]:.2f} s / {got[k][1]:.2f} s CPU" for k in names), flush=True)
    print(f"\n{args.arch} {args.size}px, {args.images} images/epoch, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} thread(s), eps_l2 {eps:.3f}, {args.repeats} rotated rounds")
    for k in names:
        print(f"{k:10s} epoch: median {statistics.median(w for w, _ in res[k]):.2f} s wall, "
              f"{statistics.median(c for _, c in res[k]):.2f} s CPU")
    for j, what in ((0, "wall"), (1, "CPU")):
        ratios = [b[j] / a[j] for a, b in zip(res["kernels"], res["no-kernels"])]
        print(f"PGD-7 epoch, no-kernels / kernels ({what}): median {statistics.median(ratios):.3f}x, "
              f"per round {' '.join(f'{v:.3f}' for v in ratios)}")


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
    batches = (data.batch(perm[b : b + batch_size]) for b in range(0, len(perm), batch_size))
    return loader_epoch(model, batches, optimizer, atk, device=device)  # torchattacks restores train mode


class PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images -> per-sample torchvision v2 transforms of Appendix A (the common way)."""

    def __init__(self, data: PreparedData, idx: np.ndarray) -> None:
        self.data, self.idx = data, idx
        self.tf = v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.RandomAffine(degrees=10), v2.RandomRotation(50),
            v2.ToDtype(torch.float32, scale=True),
        ])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        j = int(self.idx[i])
        return self.tf(torch.from_numpy(np.ascontiguousarray(self.data.images[j]))), int(self.data.labels[j])


def loader_epoch(model, loader, optimizer, attack, *, device) -> float:
    """Adversarial-training epoch over ``loader``'s (x, y) batches: ``attack(x, y)``, then the update."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x_adv = attack(x, y)
        model.train()
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def madry_attack(model, eps: float, device):
    """``robustness.attacker.Attacker`` (L2, 7 steps of eps/5, random start), or None if absent."""
    try:
        from robustness.attacker import Attacker
    except Exception as exc:  # not installed, or its imports fail on this Python
        print(f"MadryLab robustness library: not available ({type(exc).__name__}: {exc}); (d) skipped")
        return None
    if device.type != "cuda":  # its Attacker.forward calls .cuda() on the input unconditionally
        print("MadryLab robustness library: its Attacker moves inputs to CUDA unconditionally; (d) needs a GPU, skipped")
        return None

    class Identity:  # our model normalises inside; the library's normaliser must be a no-op
        mean = torch.zeros(3)
        std = torch.ones(3)

    attacker = Attacker(model, Identity()).to(device)

    def attack(x, y):
        model.eval()  # as the library's AttackerModel does
        return attacker(x, y, constraint="2", eps=eps, step_size=eps / 5, iterations=7,
                        random_start=True).detach()

    return attack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image side, px (quick preset: 64)")
    ap.add_argument("--images", type=int, default=64, help="training images per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="epochs per loop (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference loops")
    ap.add_argument("--kernels", action="store_true",
                    help="only PGD-7 training with and without the CPU input-gradient kernels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = make_data(args.images, args.size)
    idx = np.arange(args.images)
    eps = 4.0 * args.size / 224  # the paper's eps=4 at this input size
    if args.kernels:
        kernel_comparison(args, device, data, idx, eps)
        return
    torch.manual_seed(0)
    models = {k: build_model(args.arch, list("abc"), image_size=args.size).to(device)
              for k in ("std", "adv", "ref", "loader", "madry")}
    for m in models.values():
        m.load_state_dict(models["std"].state_dict())
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    adversary = Adversary(eps, "l2", 7, eps / 5, True)
    augment = Augmenter(AugmentConfig())
    loader = torch.utils.data.DataLoader(PerSampleDataset(data, idx), batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers)
    ta = torchattacks.PGDL2(models["loader"], eps=eps, alpha=eps / 5, steps=7, random_start=True)
    madry = madry_attack(models["madry"], eps, device)
    times: dict[str, list[float]] = {"std": [], "adv": [], "ref": [], "loader": [], "madry": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}

    def timed(key, fn):
        return _timed(fn)

    for r in range(args.repeats + 1):  # the first round warms up and is discarded
        t, c = {}, {}
        t["std"], c["std"] = timed("std", lambda: train_epoch(
            models["std"], data, idx, opts["std"], batch_size=args.batch, seed=0, epoch=r, device=device,
            augment=augment, progress=False)["epoch_seconds"])
        t["adv"], c["adv"] = timed("adv", lambda: train_epoch(
            models["adv"], data, idx, opts["adv"], batch_size=args.batch, seed=0, epoch=r, device=device,
            adversary=adversary, augment=augment, progress=False)["epoch_seconds"])
        t["ref"], c["ref"] = timed("ref", lambda: reference_epoch(
            models["ref"], data, idx, opts["ref"], batch_size=args.batch, eps=eps, device=device, seed=r))
        t["loader"], c["loader"] = timed("loader", lambda: loader_epoch(
            models["loader"], loader, opts["loader"], ta, device=device))
        if madry is not None:
            t["madry"], c["madry"] = timed("madry", lambda: loader_epoch(
                models["madry"], loader, opts["madry"], madry, device=device))
        if r > 0:
            for k, v in t.items():
                times[k].append(v)
                cpu[k].append(c[k])
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    cmed = {k: statistics.median(v) for k, v in cpu.items() if v}
    print(f"\n{args.arch} {args.size}px, {args.images} images/epoch, batch {args.batch}, "
          f"device {device}, {torch.get_num_threads()} thread(s), eps_l2 {eps:.3f}, median of {args.repeats}")
    print(f"epoch seconds: standard {med['std']:.2f}, robsal adversarial {med['adv']:.2f}, "
          f"torchattacks reference {med['ref']:.2f}")
    print("ratios: wall time / CPU time of this process (CPU time is steadier on a shared machine;"
          " with --workers > 0 it misses the loader workers)")
    print(f"(a) adversarial / standard epoch time: {med['adv'] / med['std']:.2f}x / {cmed['adv'] / cmed['std']:.2f}x "
          "(limit ~5.7x, target <= 6.0x)")
    print(f"(b) robsal / torchattacks adversarial throughput: {med['ref'] / med['adv']:.2f}x / "
          f"{cmed['ref'] / cmed['adv']:.2f}x (target >= 1.0)")
    print(f"(c) robsal / DataLoader + per-sample transforms + torchattacks: {med['loader'] / med['adv']:.2f}x / "
          f"{cmed['loader'] / cmed['adv']:.2f}x (target >= 1.0 on CPU, >= 2 on GPU; {args.workers} loader workers)")
    if "madry" in med:
        print(f"(d) robsal / DataLoader + per-sample transforms + robustness.Attacker: {med['madry'] / med['adv']:.2f}x / "
              f"{cmed['madry'] / cmed['adv']:.2f}x")


if __name__ == "__main__":
    main()
