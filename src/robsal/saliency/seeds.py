"""Per-image seeds for the random saliency methods (IG baselines, SmoothGrad noise).

The random draws of an image depend on that image alone, never on the batch it is
explained in: image i gets its own CPU ``torch.Generator`` seeded with ``seeds[i]``
(the draws are then moved to the device, so CPU and GPU draw the same numbers).

* :func:`image_seed` ``(run_seed, image_id)``: the seed of an image of a run, a hash of
  both (BLAKE2b, so the same in every process and on every platform, unlike Python's
  ``hash``). :func:`robsal.saliency.run.compute_maps` passes these, so a saved map
  does not depend on ``saliency.batch_size``, on the order of the images or on which
  other images were selected.
* :func:`position_seed` ``(seed, i)``: what ``explain(..., seed=<int>)`` gives the image
  at position i of the call (no ids known). A map is then reproducible for the same
  images in the same order, whatever ``batch_size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

SEED_BITS = 63  # seeds lie in [0, 2**63): int64, numpy and torch.manual_seed all take them


def _derive(kind: str, seed: int, key: str) -> int:
    h = hashlib.blake2b(f"robsal/{kind}/{int(seed)}/{key}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> (64 - SEED_BITS)


def image_seed(run_seed: int, image_id: str) -> int:
    """The seed of image ``image_id`` in a run seeded ``run_seed``: an int in [0, 2**63).

    Deterministic across processes and platforms; different ids (or run seeds) give
    unrelated seeds."""
    return _derive("image", run_seed, str(image_id))


def image_seeds(run_seed: int, image_ids: Sequence[str]) -> list[int]:
    """:func:`image_seed` of every id, in order."""
    return [image_seed(run_seed, i) for i in image_ids]


def position_seed(seed: int, position: int) -> int:
    """The seed of the image at ``position`` of an ``explain`` call given ``seed=<int>``."""
    return _derive("position", seed, str(int(position)))


def per_image_seeds(seed: int | Sequence[int] | np.ndarray | torch.Tensor | None, n: int) -> list[int]:
    """N per-image seeds from an ``explain`` ``seed`` option.

    * an int: :func:`position_seed` ``(seed, i)`` for i in range(n);
    * a sequence / array / tensor of n integers: those seeds (each in [0, 2**64));
    * None: n seeds drawn from torch's global RNG (not reproducible unless the caller
      seeded it).
    """
    if seed is None:
        return [int(s) for s in torch.randint(0, 2**62, (n,)).tolist()]
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [position_seed(int(seed), i) for i in range(n)]
    if isinstance(seed, torch.Tensor):
        seed = seed.detach().cpu().reshape(-1).tolist()
    values = np.asarray(seed).reshape(-1).tolist() if isinstance(seed, np.ndarray) else list(seed)
    if len(values) != n:
        raise ValueError(f"seed: got {len(values)} per-image seeds for {n} images")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 2**64:
            raise ValueError(f"seed: per-image seeds must be integers in [0, 2**64), got {v!r}")
        out.append(int(v))
    return out


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One fresh CPU generator per image, seeded with its seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
