"""The in-memory view of a prepared dataset that every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from robsal.errors import DataError

# Accelerator-resident copy of the uint8 images (issue 8 "the cache lives on the device"):
# at most this many bytes, and at most this share of the device's free memory.
DEVICE_CACHE_MAX_BYTES = 8 * 2**30
DEVICE_CACHE_MAX_FREE_SHARE = 0.25

SPLITS_COLUMNS = ["image_id", "lesion_id", "label", "split", "fold"]
ARTIFACT_NAMES = ("hair", "ruler", "vignette", "bubble")


def gather(arrays: tuple[torch.Tensor, torch.Tensor], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``idx`` of device-resident (uint8 images, labels) -> (float [0, 1] images, labels)."""
    images, labels = arrays
    sel = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(images.device, non_blocking=True)
    return images.index_select(0, sel).float().div_(255.0), labels.index_select(0, sel)


@dataclass
class PreparedData:
    """Images of every split, preprocessed to the model's input size, plus labels and masks.

    Row ``i`` of every array is row ``i`` of ``splits`` (``RUN/splits.csv``).

    images:          (N, 3, S, S) uint8, 0..255 (may be a read-only memory map)
    labels:          (N,) int64 indices into ``classes``
    masks:           (N, S, S) uint8 {0, 1} lesion masks, or None when the dataset has none;
                     rows with ``has_mask[i] == False`` are all zero and must be skipped
    has_mask:        (N,) bool
    artifact_masks:  name -> (N, S, S) uint8 {0, 1}; names from ARTIFACT_NAMES; {} if none
    splits:          DataFrame with columns image_id, lesion_id, label (class name),
                     split (train | val | test), fold (1..k for train rows, <NA> otherwise)
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: pd.DataFrame
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    artifact_masks: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.splits)
        if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, S, S) with N={n}, got {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {self.labels.shape}")
        if self.masks is not None and self.has_mask is None:
            self.has_mask = np.ones(n, dtype=bool)
        if self.has_mask is None:
            self.has_mask = np.zeros(n, dtype=bool)
        self._row = {iid: i for i, iid in enumerate(self.splits["image_id"].astype(str))}
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.splits)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_ids(self) -> list[str]:
        return self.splits["image_id"].astype(str).tolist()

    @property
    def lesion_ids(self) -> list[str]:
        return self.splits["lesion_id"].astype(str).tolist()

    def indices(self, split: str, fold: int | None = None, exclude_fold: int | None = None) -> np.ndarray:
        """Row indices of one split; ``fold``/``exclude_fold`` select CV folds of ``train``."""
        sel = np.array(self.splits["split"] == split, dtype=bool)  # a writable copy (pandas 3 views are read-only)
        if fold is not None or exclude_fold is not None:
            folds = pd.to_numeric(self.splits["fold"], errors="coerce").to_numpy()
            if fold is not None:
                sel &= folds == fold
            if exclude_fold is not None:
                sel &= folds != exclude_fold
        return np.flatnonzero(sel)

    def rows_of(self, image_ids: list[str] | np.ndarray) -> np.ndarray:
        """Row indices of the given image ids (an unknown id is a DataError naming it)."""
        out = []
        for iid in image_ids:
            row = self._row.get(str(iid))
            if row is None:
                raise DataError(f"image id {iid!r} is not in this run's splits.csv")
            out.append(row)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ tensors
    def batch(
        self, idx: np.ndarray | list[int], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 (B, 3, S, S) in [0, 1], labels int64 (B,)) on ``device``.

        On an accelerator the whole uint8 image array is copied to the device once (when it
        fits: see :data:`DEVICE_CACHE_MAX_BYTES`), and later batches are gathered there, so
        no image crosses the host-device bus twice. On the CPU (and when it does not fit)
        each batch is gathered from the host array.
        """
        idx = np.asarray(idx, dtype=np.int64)
        cached = self.device_arrays(device)
        if cached is not None:
            return gather(cached, idx)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).to(device)
        y = torch.from_numpy(self.labels[idx]).to(device)
        return x.float().div_(255.0), y

    def device_arrays(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(uint8 images, int64 labels) resident on ``device``, or None on the CPU / when too big."""
        device = torch.device(device)
        if device.type == "cpu":
            return None
        key = str(device)
        if key not in self._on_device:
            nbytes = self.images.nbytes + self.labels.nbytes
            budget = DEVICE_CACHE_MAX_BYTES
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                budget = min(budget, int(free * DEVICE_CACHE_MAX_FREE_SHARE))
            self._on_device[key] = None if nbytes > budget else (
                torch.from_numpy(np.ascontiguousarray(self.images)).to(device),
                torch.from_numpy(np.ascontiguousarray(self.labels)).to(device),
            )
        return self._on_device[key]

    def mask_batch(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """Lesion masks (B, S, S) bool; raises DataError when the dataset has none."""
        if self.masks is None:
            raise DataError("this dataset has no lesion masks; localisation metrics need them")
        return self.masks[np.asarray(idx, dtype=np.int64)].astype(bool)
