"""Counterfactual renders of the built-in synthetic dataset: one image again, one artifact less or more.

The generator (:mod:`robsal.data.synthetic`) draws every image from seeded streams keyed by
its index, so any image of a generated dataset can be rendered again, identically, from the
dataset's ``synth.json``. :class:`SynthSource` does that, and renders the same image with a
chosen artifact **removed** (its random draws are consumed but it is not painted, so the
lesion, the skin, the pose and the other artifacts are unchanged) or **added** (drawn from its
own stream ``default_rng([seed, 5, index, k])``, k the artifact's position in
:data:`~robsal.data.synthetic.ARTIFACTS`; the image's own stream is untouched).

A :class:`CounterfactualPair` holds both renders, the artifact's mask (as the dataset writes
it) and ``changed``, every pixel the artifact's painting touches. Outside ``changed`` the two
raw renders are identical, bit for bit; for the ruler and hairs ``changed`` lies inside the
mask, for bubbles and the vignette it also covers a faint fringe (a bubble's rim and
highlight, the darkening below the vignette mask's 30 % threshold). Saved as JPEG (as the
dataset's images are) the two agree outside ``changed`` up to JPEG coding: only the 16x16
coding blocks that touch ``changed``, and their neighbours through chroma upsampling, may
differ (``tests/data/test_counterfactual.py``).

:func:`model_input` turns a render into what a model of a run sees: JPEG-coded like the
dataset's files, centre-cropped and resized exactly as :mod:`robsal.data.cache` does, so the
render of a dataset image gives the run's cached array bit for bit.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robsal.data import synthetic
from robsal.data.synthetic import ARTIFACTS, JPEG_QUALITY, Lesion, SynthSample, SynthSettings
from robsal.errors import DataError


@dataclass
class CounterfactualPair:
    """One image with and without one artifact; arrays at the dataset's resolution."""

    image_id: str
    label: str  # the image's class
    artifact: str
    carried: bool  # True: the dataset's image has the artifact (it was removed); False: it was added
    with_artifact: np.ndarray  # (H, W, 3) uint8
    without: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the artifact's mask
    changed: np.ndarray  # (H, W) bool, every pixel the artifact's painting touches


class SynthSource:
    """The settings and plan of a generated dataset; renders any of its images again."""

    def __init__(self, settings: SynthSettings) -> None:
        self.settings = settings
        self.rows = synthetic.plan(settings)
        self._index = {r["image_id"]: i for i, r in enumerate(self.rows)}
        self._lesions: dict[int, Lesion] = {}

    @classmethod
    def from_folder(cls, root: str | Path) -> SynthSource:
        """The source of the dataset generated in ``root`` (its ``synth.json``)."""
        info = synthetic.read_settings(root)
        if info is None or not isinstance(info.get("settings"), dict):
            raise DataError(f"{root} is not a robsal synthetic dataset (no readable synth.json); "
                            "counterfactuals need the generator's settings")
        if info.get("version") != synthetic.SYNTH_VERSION:
            raise DataError(f"{root}: synthetic dataset version {info.get('version')} is not this generator's "
                            f"({synthetic.SYNTH_VERSION}); generate it again")
        known = SynthSettings.__dataclass_fields__
        return cls(SynthSettings(**{k: v for k, v in info["settings"].items() if k in known}))

    # ------------------------------------------------------------------ lookup
    def index(self, image_id: str) -> int:
        i = self._index.get(str(image_id))
        if i is None:
            raise DataError(f"image id {image_id!r} is not in this synthetic dataset")
        return i

    def row(self, image_id: str) -> dict:
        return self.rows[self.index(image_id)]

    def lesion(self, i: int) -> Lesion:
        li = int(self.rows[i]["lesion"])
        if li not in self._lesions:
            s = self.settings
            self._lesions[li] = synthetic.sample_lesion(np.random.default_rng([s.seed, 1, li]),
                                                        self.rows[i]["dx"], s.difficulty)
        return self._lesions[li]

    # ------------------------------------------------------------------ renders
    def add_rng(self, i: int, artifact: str) -> np.random.Generator:
        """The independent stream an artifact added to image ``i`` is drawn from."""
        return np.random.default_rng([self.settings.seed, 5, i, ARTIFACTS.index(artifact)])

    def render(self, image_id: str, *, hide: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> SynthSample:
        """Image ``image_id`` as the generator drew it, with the artifacts of ``hide`` left unpainted and
        those of ``add`` (absent from it) added. No option: the dataset's image, before JPEG coding."""
        _check(*hide, *add)
        i = self.index(image_id)
        row = self.rows[i]
        present = tuple(row["artifacts"])
        extra = {a: self.add_rng(i, a) for a in add if a not in present}
        return synthetic.render(self.lesion(i), np.random.default_rng([self.settings.seed, 4, i]),
                                self.settings.size, present, hide=tuple(hide), add=extra)

    def pair(self, image_id: str, artifact: str) -> CounterfactualPair:
        """``image_id`` with and without ``artifact``: removed where the image carries it, else added.

        Both sides are rendered with the artifact drawn, so they agree outside ``changed`` exactly
        (also in floating-point precision: a bubble turns the image into float64). For a carried
        artifact ``with_artifact`` is the dataset's image; for an added one ``without`` is the
        dataset's image (up to float rounding when the added artifact is a bubble).
        """
        _check(artifact)
        row = self.row(image_id)
        carried = artifact in row["artifacts"]
        add = () if carried else (artifact,)
        with_ = self.render(image_id, add=add)
        without = self.render(image_id, add=add, hide=(artifact,))
        changed = without.changed[artifact] | with_.changed.get(artifact, np.zeros_like(without.mask))
        return CounterfactualPair(str(image_id), str(row["dx"]), artifact, carried, with_.image, without.image,
                                  without.artifacts[artifact].copy(), changed)


def _check(*artifacts: str) -> None:
    for a in artifacts:
        if a not in ARTIFACTS:
            raise DataError(f"unknown artifact {a!r}; the generator draws {', '.join(ARTIFACTS)}")


# --------------------------------------------------------------------------- model inputs


def jpeg_roundtrip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after saving as JPEG (as the generator saves) and decoding."""
    buf = _io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _crop(im: Image.Image, center_crop: bool) -> Image.Image:
    w, h = im.size  # the central square, as robsal.data.cache crops (HAM10000: 450x450 of 600x450)
    if not center_crop or w == h:
        return im
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def model_input(image: np.ndarray, size: int, *, center_crop: bool = True, jpeg: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 render -> (3, size, size) uint8, as a run's data stage would load it from disk."""
    if jpeg:
        image = jpeg_roundtrip(image)
    im = _crop(Image.fromarray(image), center_crop).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def model_mask(mask: np.ndarray, size: int, *, center_crop: bool = True) -> np.ndarray:
    """(H, W) bool -> (size, size) uint8 {0, 1}, as the data stage loads a mask (nearest neighbour)."""
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    im = _crop(im, center_crop).resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(im) > 127).astype(np.uint8)
