"""Built-in synthetic dermoscopy with ground-truth masks, written in the HAM10000 layout.

No real dermoscopy can be shipped, so robsal draws its own: a skin background with
tone and texture variation, one lesion per image, and class-independent artifacts.
The class evidence lies *inside the lesion* and mimics the cues dermatologists use
(paper Section 2 / Appendix A use HAM10000's mel, nv, bkl):

* ``mel`` melanoma: irregular, asymmetric border; asymmetric colour variegation
  (light/dark brown, black, reddish); blue-grey and dark blotches; atypical
  (broken, irregular) pigment network; fuzzier border.
* ``nv`` nevus: regular round/oval shape, uniform brown, regular honeycomb
  pigment network fading towards the border.
* ``bkl`` benign keratosis: lighter, waxy tan lesion with a cerebriform texture,
  milia-like white dots and comedo-like dark openings, sharp border.

Each cue is a number in [0, 1] drawn per lesion around a class centre. ``difficulty``
(0..1) pulls the class centres towards each other, widens the spread and, with
probability ``0.35 * difficulty``, gives a lesion one cue of another class, so the
classes overlap and the task is not trivial. The knob is *not* tuned to favour
any model.

Artifacts (class-independent unless ``spurious_ruler_mel`` or a planted artifact is set): hairs, dark
vignette corners, ruler marks, gel bubbles. Each has its own mask.

Layout written (the HAM10000 loader reads it like the real dataset)::

    OUT/HAM10000_metadata.csv      lesion_id,image_id,dx,dx_type,age,sex,localization,
                                   + hair,ruler,vignette,bubble (0/1 flags, synthetic only)
    OUT/images/ISIC_0000000.jpg    4:3 RGB JPEG, height = size, width = round(size*4/3)
    OUT/masks/ISIC_0000000_segmentation.png     lesion mask, 0/255 (HAM10000 naming)
    OUT/masks/ISIC_0000000_<artifact>.png       only when that artifact is present
    OUT/synth.json                 generator settings and version

Images are 4:3 like HAM10000's 600x450, so the centre crop of Appendix A applies.
Some lesions get several views (same ``lesion_id``; rotated, rescaled, shifted,
relit, with their own artifacts) as in HAM10000.

Determinism: everything is drawn from ``numpy.random.default_rng([seed, ...])``
streams keyed by the lesion/view index, so a seed gives identical files.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from robsal.errors import DataError
from robsal.io import DiskFullError, current_umask, is_disk_full

CLASSES = ("mel", "nv", "bkl")
ARTIFACTS = ("hair", "ruler", "vignette", "bubble")
SYNTH_VERSION = 1
JPEG_QUALITY = 92  # of the images written
METADATA_NAME = "HAM10000_metadata.csv"

CUES = ("irregular", "variegation", "darkness", "network", "bluegrey", "milia", "waxy", "sharp")
# Class centres of each cue in [0, 1] (see module docstring).
CENTRES: dict[str, dict[str, float]] = {
    "mel": dict(irregular=0.85, variegation=0.85, darkness=0.7, network=0.35, bluegrey=0.75, milia=0.05, waxy=0.1, sharp=0.3),
    "nv": dict(irregular=0.12, variegation=0.12, darkness=0.5, network=0.85, bluegrey=0.05, milia=0.05, waxy=0.1, sharp=0.55),
    "bkl": dict(irregular=0.3, variegation=0.3, darkness=0.15, network=0.1, bluegrey=0.05, milia=0.8, waxy=0.85, sharp=0.9),
}

# RGB colours in [0, 1]
_TAN = np.array([0.74, 0.56, 0.42], np.float32)
_DARK_BROWN = np.array([0.30, 0.18, 0.12], np.float32)
_BLACK = np.array([0.10, 0.07, 0.07], np.float32)
_BLUE_GREY = np.array([0.40, 0.46, 0.56], np.float32)
_RED = np.array([0.72, 0.38, 0.38], np.float32)
_MILIA = np.array([0.96, 0.93, 0.82], np.float32)
_WAXY = np.array([0.80, 0.68, 0.48], np.float32)
_SKIN_LIGHT = np.array([0.95, 0.80, 0.72], np.float32)
_SKIN_DARK = np.array([0.70, 0.50, 0.38], np.float32)


@dataclass
class SynthSettings:
    """Generator settings (mirror of :class:`robsal.config.SynthConfig`)."""

    n: int = 600
    size: int = 128
    seed: int = 0
    multi_view_rate: float = 0.25
    hair_rate: float = 0.35
    ruler_rate: float = 0.15
    vignette_rate: float = 0.25
    bubble_rate: float = 0.15
    spurious_ruler_mel: float | None = None
    difficulty: float = 0.5
    # A planted shortcut (the positive control, robsal.experiments.control): ``planted_artifact``
    # appears only on images of ``planted_class``, on a share ``planted_rate`` of them, and never
    # on the other classes (its own rate above is then unused). ``spurious_ruler_mel = p`` is the
    # same as ("ruler", "mel", p). Written to synth.json only when set, so the files of every
    # setting without a planted artifact stay byte-identical.
    planted_artifact: str | None = None
    planted_class: str | None = None
    planted_rate: float | None = None

    _PLANTED = ("planted_artifact", "planted_class", "planted_rate")

    @classmethod
    def from_config(cls, synth) -> SynthSettings:  # noqa: ANN001 - SynthConfig
        fields = cls.__dataclass_fields__
        return cls(**{k: getattr(synth, k, fields[k].default) for k in fields})

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.planted_artifact is None:
            for k in self._PLANTED:
                d.pop(k)
        return d

    def shortcut(self) -> tuple[str, str, float] | None:
        """(artifact, class, rate) of the planted shortcut, or None; DataError on a bad setting."""
        if self.planted_artifact is None:
            if self.planted_class is not None or self.planted_rate is not None:
                raise DataError("planted_class and planted_rate need planted_artifact (hair, ruler, vignette or bubble)")
            return None if self.spurious_ruler_mel is None else ("ruler", "mel", float(self.spurious_ruler_mel))
        if self.spurious_ruler_mel is not None:
            raise DataError("set either spurious_ruler_mel or planted_artifact, not both")
        if self.planted_artifact not in ARTIFACTS:
            raise DataError(f"planted_artifact {self.planted_artifact!r} is not one of {', '.join(ARTIFACTS)}")
        if self.planted_class not in CLASSES:
            raise DataError(f"planted_class {self.planted_class!r} is not one of {', '.join(CLASSES)}")
        rate = self.planted_rate
        if rate is None or not 0.0 <= float(rate) <= 1.0:
            raise DataError(f"planted_rate must lie in [0, 1], got {rate!r}")
        return self.planted_artifact, self.planted_class, float(rate)


@dataclass
class Lesion:
    """Everything fixed for one lesion (shared by its views)."""

    label: str
    cues: dict[str, float]
    radius: float  # fraction of image height
    harmonics: np.ndarray  # (K, 3): k, amplitude, phase of the border r(theta)
    seed: int  # for the internal pattern (same for every view)


@dataclass
class SynthSample:
    """One rendered view. ``skin`` is the background before lesion and artifacts."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool lesion mask
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W) bool, present ones only
    skin: np.ndarray | None = None  # (H, W, 3) float32 in [0, 1]
    # name -> (H, W) bool, for the artifacts named in render's ``hide`` or ``add`` only: every pixel
    # whose value the artifact's painting changes (or would change), before quantisation. Equal to
    # or inside its mask for ruler and hair; wider for bubble (faint rim and highlight) and vignette
    # (the darkening below the mask's 30 % threshold).
    changed: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- lesions


def sample_lesion(rng: np.random.Generator, label: str, difficulty: float) -> Lesion:
    """Draw cue strengths and border shape for one lesion of class ``label``."""
    mean = {c: float(np.mean([CENTRES[k][c] for k in CLASSES])) for c in CUES}
    spread = 0.08 + 0.22 * difficulty
    cues = {}
    for c in CUES:
        centre = CENTRES[label][c] + (mean[c] - CENTRES[label][c]) * 0.6 * difficulty
        cues[c] = float(np.clip(centre + rng.normal(0.0, spread), 0.0, 1.0))
    if rng.random() < 0.35 * difficulty:  # a confuser: one cue typical of another class
        other = rng.choice([k for k in CLASSES if k != label])
        c = CUES[rng.integers(len(CUES))]
        cues[c] = float(np.clip(CENTRES[other][c] + rng.normal(0.0, 0.05), 0.0, 1.0))
    irr = cues["irregular"]
    ks = np.arange(1, 17)
    amp = np.zeros(len(ks), np.float32)
    amp[0] = 0.10 * irr * rng.uniform(0.3, 1.0)  # k=1: asymmetry
    amp[1] = rng.uniform(0.03, 0.12)  # k=2: oval, every class
    amp[2:7] = (0.01 + 0.14 * irr) * rng.uniform(0.2, 1.0, 5) / np.sqrt(ks[2:7] / 3.0)
    amp[7:] = 0.035 * irr * rng.uniform(0.0, 1.0, len(ks) - 7)  # ragged edge
    harmonics = np.stack([ks, amp, rng.uniform(0, 2 * np.pi, len(ks))], axis=1).astype(np.float32)
    radius = float(rng.uniform(0.20, 0.33))
    return Lesion(label, cues, radius, harmonics, int(rng.integers(2**31)))


def _border(h: Lesion, theta: np.ndarray) -> np.ndarray:
    """Relative border radius r(theta)/R (about 1), >= 0.45."""
    k, a, p = h.harmonics[:, 0], h.harmonics[:, 1], h.harmonics[:, 2]
    r = 1.0 + (a[:, None] * np.cos(k[:, None] * theta[None, :] + p[:, None])).sum(0)
    return np.maximum(r, 0.45)


def _fourier(rng, xs, ys, cx, cy, rot, scale, n, fmin, fmax) -> np.ndarray:
    """Smooth random field on the pixel grid, defined in lesion-local coordinates.

    Sum of ``n`` plane waves with frequencies in [fmin, fmax] cycles per unit of
    local coordinate; separable per wave, so the whole field is one (H,K)@(K,W)
    matrix product. Roughly unit variance.
    """
    f = rng.uniform(fmin, fmax, n) * 2 * np.pi
    d = rng.uniform(0, 2 * np.pi, n)
    a, b = f * np.cos(d), f * np.sin(d)  # (n,) frequency in local (u, v)
    phi = rng.uniform(0, 2 * np.pi, n)
    c, s = np.cos(rot), np.sin(rot)
    A = (a * c - b * s) / scale  # u = (c dx + s dy)/scale, v = (-s dx + c dy)/scale
    B = (a * s + b * c) / scale
    C = phi - A * cx - B * cy
    py = (B[:, None] * ys[None, :] + C[:, None]).astype(np.float32)  # (n, H)
    px = (A[:, None] * xs[None, :]).astype(np.float32)  # (n, W)
    # cos(py + px) = cos py cos px - sin py sin px: one real (H, 2n) @ (2n, W) product
    left = np.concatenate([np.cos(py), -np.sin(py)]).T
    right = np.concatenate([np.cos(px), np.sin(px)])
    return (left @ right) * np.float32(np.sqrt(2.0 / n))  # (H, W)


def _mix(img: np.ndarray, colour: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Blend towards ``colour`` with weight ``w`` (H, W) clipped to [0, 1]."""
    w = np.clip(np.asarray(w, np.float32), 0.0, 1.0)[..., None]
    if not w.any():
        return img
    return img + (np.asarray(colour, np.float32) - img) * w


def _above(cue: float, floor: float = 0.2) -> float:
    """A cue's strength above a floor, rescaled to [0, 1] (weak cues draw no spots)."""
    return max(cue - floor, 0.0) / (1.0 - floor)


def _dots(lr, u, v, n, radius, sigma, strength=(1.0, 1.0)) -> np.ndarray:
    """Max of ``n`` Gaussian spots at radius in ``radius`` (local units) -> (H, W) weight."""
    out = np.zeros(u.shape, np.float32)
    for _ in range(int(n)):
        r0, a0 = lr.uniform(*radius), lr.uniform(0, 2 * np.pi)
        sg = lr.uniform(*sigma)
        k = np.float32(lr.uniform(*strength))
        d2 = (u - np.float32(r0 * np.cos(a0))) ** 2 + (v - np.float32(r0 * np.sin(a0))) ** 2
        np.maximum(out, k * np.exp(d2 * np.float32(-0.5 / (sg * sg))), out=out)
    return out


def render(
    lesion: Lesion,
    rng: np.random.Generator,
    size: int,
    artifacts: tuple[str, ...] = (),
    *,
    hide: tuple[str, ...] = (),
    add: dict[str, np.random.Generator] | None = None,
) -> SynthSample:
    """Render one view of ``lesion`` at height ``size`` (width ``round(size*4/3)``).

    ``rng`` draws the view (pose, skin, artifacts); the lesion's internal pattern
    comes from ``lesion.seed`` so every view shows the same lesion.

    Counterfactual renders (:mod:`robsal.data.counterfactual`): an artifact named in ``hide``
    is drawn as usual (its random draws are consumed, so everything drawn after it is
    unchanged) but not painted; ``add`` maps an artifact absent from ``artifacts`` to its own
    generator, which draws it (the view's ``rng`` is not touched). Artifacts are painted in
    the fixed order bubble, hair, ruler, vignette, each a per-pixel operation, so hiding or
    adding one changes no pixel outside its ``changed`` footprint. With the defaults the
    result is exactly what it was before these options existed.
    """
    H, W = size, int(round(size * 4 / 3))
    ys = np.arange(H, dtype=np.float32) + 0.5
    xs = np.arange(W, dtype=np.float32) + 0.5
    cue = lesion.cues

    # ---- skin: tone, low-frequency shading, fine texture
    tone = rng.uniform(0, 1)
    skin_col = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone
    skin_col = skin_col * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    low = _fourier(rng, xs, ys, W / 2, H / 2, 0.0, H, 5, 0.3, 1.5)
    tex = _fourier(rng, xs, ys, W / 2, H / 2, 0.0, H, 12, 8, 20)
    skin = skin_col[None, None, :] * (1 + 0.05 * low[..., None] + 0.02 * tex[..., None])
    skin = skin + rng.normal(0, 0.012, (H, W, 1)).astype(np.float32)
    skin = skin.astype(np.float32)

    # ---- pose of this view
    scale = lesion.radius * H * rng.uniform(0.9, 1.1)
    rot = rng.uniform(0, 2 * np.pi)
    cx = W / 2 + rng.uniform(-0.08, 0.08) * H
    cy = H / 2 + rng.uniform(-0.08, 0.08) * H
    soft = 0.015 + 0.12 * (1 - cue["sharp"])  # border width (rn units) from the sharpness cue
    lut_t = np.linspace(-np.pi, np.pi, 1025, dtype=np.float32)
    lut_r = _border(lesion, lut_t)
    # the lesion is drawn in its bounding box only (alpha < 1e-3 outside it)
    box = scale * float(lut_r.max()) * (1 + 7 * soft)
    y0, y1 = max(0, int(cy - box)), min(H, int(np.ceil(cy + box)) + 1)
    x0, x1 = max(0, int(cx - box)), min(W, int(np.ceil(cx + box)) + 1)
    xl, yl = xs[x0:x1], ys[y0:y1]
    dx, dy = xl[None, :] - cx, yl[:, None] - cy  # (h, w) box coordinates
    c, s = np.cos(rot), np.sin(rot)
    u = (c * dx + s * dy) / scale  # lesion-local coordinates, radius ~1
    v = (-s * dx + c * dy) / scale
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    rb = lut_r[np.clip(((theta + np.pi) / (2 * np.pi) * 1024).round().astype(np.int64), 0, 1024)]
    rn = rho / rb  # < 1 inside the lesion
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = rn < 1.0

    # ---- lesion colour (internal pattern fixed per lesion)
    lr = np.random.default_rng(lesion.seed)

    def field_(n, fmin, fmax):
        return _fourier(lr, xl, yl, cx, cy, rot, scale, n, fmin, fmax)

    base = _TAN * (1 - cue["darkness"]) + _DARK_BROWN * cue["darkness"]
    col = np.broadcast_to(base, (*u.shape, 3)).astype(np.float32)
    col = col * (1 - 0.18 * (1 - np.clip(rn, 0, 1)))[..., None]  # darker centre
    # variegation: asymmetric gradient + low-frequency blotches of dark/black and red
    g_dir = lr.uniform(0, 2 * np.pi)
    grad = u * np.cos(g_dir) + v * np.sin(g_dir)
    var = 0.6 * field_(4, 0.3, 1.2) + 0.6 * grad
    vg = cue["variegation"]
    col = _mix(col, _DARK_BROWN, vg * np.clip(var, 0, None))
    col = _mix(col, _BLACK, vg * np.clip(var - 0.7, 0, None) * 1.5)
    col = _mix(col, _RED, 0.6 * vg * np.clip(-field_(3, 0.4, 1.0) - 0.3, 0, None))
    col = _mix(col, _TAN * 1.1, 0.5 * vg * np.clip(-var - 0.4, 0, None))
    # blue-grey blotches, off centre
    blobs = _dots(lr, u, v, lr.poisson(4 * _above(cue["bluegrey"])), (0.2, 0.7), (0.12, 0.28), (0.6, 1.0))
    col = _mix(col, _BLUE_GREY, 1.2 * cue["bluegrey"] * blobs)
    # pigment network: honeycomb of three waves; irregular cue breaks it up
    f = lr.uniform(5.0, 7.0) * 2 * np.pi
    d0 = lr.uniform(0, np.pi)
    hx = sum(np.cos(f * (u * np.cos(d0 + j * np.pi / 3) + v * np.sin(d0 + j * np.pi / 3)) + lr.uniform(0, 6.3)) for j in range(3))
    hx = hx + 2.5 * cue["irregular"] * field_(6, 1.5, 4.0)
    lines = np.clip((-hx - 0.5) / 1.5, 0, 1)  # dark lines where the honeycomb is low
    fade = np.clip(1.3 - rn, 0, 1)
    col = col * (1 - 0.45 * cue["network"] * lines * fade)[..., None]
    # keratosis: waxy cerebriform texture, milia-like dots, comedo-like openings
    wx = cue["waxy"]
    ridges = np.clip(1 - np.abs(field_(8, 2.0, 4.0)) * 2.5, 0, 1)
    col = _mix(col, _WAXY, wx * (0.45 + 0.3 * ridges))
    col = _mix(col, _MILIA, 1.6 * _dots(lr, u, v, lr.poisson(12 * _above(cue["milia"])), (0.0, 0.8), (0.04, 0.08)))
    col = _mix(col, _DARK_BROWN * 0.8, 1.4 * _dots(lr, u, v, lr.poisson(5 * _above(cue["milia"])), (0.0, 0.8), (0.03, 0.05)))
    col = col * (1 + 0.04 * field_(10, 6, 14))[..., None]  # fine texture
    # lesion over skin; the border width comes from the sharpness cue
    alpha = 1.0 / (1.0 + np.exp(-(1.0 - rn) / soft))  # 0.5 exactly at the mask border
    opacity = rng.uniform(0.8, 0.95)
    sk = skin[y0:y1, x0:x1]
    lesion_rgb = col * (0.85 + 0.15 * sk / skin_col)  # keep a bit of the skin texture
    img = skin.copy()
    img[y0:y1, x0:x1] = _mix(sk, lesion_rgb, opacity * alpha)

    # ---- artifacts
    art: dict[str, np.ndarray] = {}
    changed: dict[str, np.ndarray] = {}
    add = add or {}
    painters = {
        "bubble": lambda im, r: _bubbles(im, r, xs, ys),
        "hair": lambda im, r: _hairs(im, r, H, W),
        "ruler": lambda im, r: _ruler(im, r, H, W),
        "vignette": lambda im, r: _vignette(im, r, xs, ys, H, W),
    }
    for name in ("bubble", "hair", "ruler", "vignette"):
        if name in artifacts:
            painted, art[name] = painters[name](img, rng)
        elif name in add:
            painted, art[name] = painters[name](img, add[name])
        else:
            continue
        if name in hide or name in add:
            changed[name] = np.any(painted != img, axis=-1)
        if name in hide:  # drawn, not painted; keep the precision the painted image would have
            img = img.astype(painted.dtype, copy=False)
        else:
            img = painted
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SynthSample(image=image, mask=mask, artifacts=art, skin=np.clip(skin, 0, 1), changed=changed)


def _bubbles(img, rng, xs, ys):
    H, W = len(ys), len(xs)
    m = np.zeros((H, W), bool)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.04, 0.10) * H
        bx, by = rng.uniform(0.15, 0.85) * W, rng.uniform(0.1, 0.9) * H
        d = np.sqrt((xs[None, :] - bx) ** 2 + (ys[:, None] - by) ** 2) / r
        disk = d < 1.0
        rim = np.exp(-((d - 0.95) ** 2) / 0.004)
        hl = np.exp(-((xs[None, :] - bx + 0.35 * r) ** 2 + (ys[:, None] - by + 0.35 * r) ** 2) / (0.03 * r * r + 1))
        img = img * (1 + 0.08 * disk)[..., None]
        img = _mix(img, np.ones(3, np.float32), 0.6 * rim + 0.8 * hl)
        m |= disk
    return img, m


def _hairs(img, rng, H, W):
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(H / 100)))
    for _ in range(rng.integers(2, 9)):
        p0 = rng.uniform(0, 1, 2) * (W, H)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.4, 1.2) * H
        p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * H, 2)
        t = np.linspace(0, 1, 40)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
        draw.line([tuple(p) for p in pts], fill=255, width=width + int(rng.integers(0, 2)))
    m = np.asarray(canvas) > 0
    colour = np.array([0.12, 0.08, 0.06], np.float32) * rng.uniform(0.7, 1.5)
    return _mix(img, colour, 0.85 * m), m


def _ruler(img, rng, H, W):
    """Ruler band with ticks along one side of the central square (kept by the crop)."""
    band = max(3, int(round(H * rng.uniform(0.07, 0.11))))
    x0 = (W - H) // 2
    canvas = Image.new("L", (W, H), 0)
    ticks = Image.new("L", (W, H), 0)
    dr, dt = ImageDraw.Draw(canvas), ImageDraw.Draw(ticks)
    side = rng.integers(4)
    step = max(2, int(round(H / 32)))
    if side < 2:  # horizontal band at top / bottom
        yb = 1 if side == 0 else H - 1 - band
        dr.rectangle([x0, yb, x0 + H - 1, yb + band], fill=255)
        for i, x in enumerate(range(x0 + 2, x0 + H - 1, step)):
            dt.line([(x, yb), (x, yb + (band if i % 5 == 0 else band // 2))], fill=255)
    else:  # vertical band at left / right of the central square
        xb = x0 + 1 if side == 2 else x0 + H - 1 - band
        dr.rectangle([xb, 0, xb + band, H - 1], fill=255)
        for i, y in enumerate(range(2, H - 1, step)):
            dt.line([(xb, y), (xb + (band if i % 5 == 0 else band // 2), y)], fill=255)
    m = np.asarray(canvas) > 0
    t = np.asarray(ticks) > 0
    img = _mix(img, np.array([0.92, 0.92, 0.88], np.float32), 0.8 * m)
    img = _mix(img, np.array([0.1, 0.1, 0.1], np.float32), 0.9 * (t & m))
    return img, m


def _vignette(img, rng, xs, ys, H, W):
    """Dark corners of a round dermatoscope field; mask where darkening > 30 %."""
    r = np.sqrt((xs[None, :] - W / 2) ** 2 + (ys[:, None] - H / 2) ** 2) / (H / 2)
    r0 = rng.uniform(1.0, 1.2)
    dark = np.clip((r - r0) / 0.2, 0, 1)
    img = img * (1 - 0.92 * dark)[..., None]
    return img, dark > 0.3


# --------------------------------------------------------------------------- dataset


def plan(settings: SynthSettings) -> list[dict]:
    """The dataset's rows (deterministic): image_id, lesion_id, dx, view, artifacts, lesion index.

    Classes are balanced by *image* count (``n // 3`` each, the remainder to the
    first classes). Lesions get 1 view, or 2-4 with ``multi_view_rate``; the last
    lesion of a class is trimmed to hit the count exactly.
    """
    s = settings
    shortcut = s.shortcut()
    rng = np.random.default_rng([s.seed, 0])
    per_class = [s.n // len(CLASSES) + (1 if i < s.n % len(CLASSES) else 0) for i in range(len(CLASSES))]
    rows = []
    lesion_no = 0
    for label, count in zip(CLASSES, per_class):
        left = count
        while left > 0:
            views = 1 if rng.random() >= s.multi_view_rate else int(rng.integers(2, 5))
            views = min(views, left)
            for vi in range(views):
                rows.append({"dx": label, "lesion": lesion_no, "view": vi})
            left -= views
            lesion_no += 1
    order = rng.permutation(len(rows))  # interleave classes
    rows = [rows[i] for i in order]
    lesion_ids = rng.permutation(lesion_no)  # lesion numbers do not reveal the class
    for i, row in enumerate(rows):
        row["image_id"] = f"ISIC_{24306 + i:07d}"
        row["lesion_id"] = f"HAM_{lesion_ids[row['lesion']]:07d}"
        ar = np.random.default_rng([s.seed, 2, i])
        present = []
        # one uniform draw per artifact, always in this order (hair, vignette, bubble, ruler)
        for name, rate in (("hair", s.hair_rate), ("vignette", s.vignette_rate), ("bubble", s.bubble_rate),
                           ("ruler", s.ruler_rate)):
            u = ar.random()
            if shortcut is not None and name == shortcut[0]:  # the shortcut: only (and then often) with one class
                on = row["dx"] == shortcut[1] and u < shortcut[2]
            else:
                on = u < rate
            if on:
                present.append(name)
        row["artifacts"] = tuple(present)
        meta = np.random.default_rng([s.seed, 3, int(row["lesion"])])
        row["dx_type"] = "histo" if row["dx"] == "mel" else str(meta.choice(["histo", "follow_up", "consensus"]))
        row["age"] = float(5 * meta.integers(4, 18))
        row["sex"] = str(meta.choice(["male", "female"]))
        row["localization"] = str(meta.choice(["back", "trunk", "lower extremity", "upper extremity", "face", "abdomen"]))
    return rows


def _encode_png(mask: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def generate(out: str | Path, settings: SynthSettings, *, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the synthetic dataset into ``out`` (see module docstring); returns ``out``.

    Files are written into a temporary folder beside ``out`` and renamed into
    place at the end, so an interrupted run leaves no half dataset. ``out`` must
    not exist or be empty unless ``overwrite`` (then it must be a folder this
    generator wrote: it holds ``synth.json``). Overwriting replaces only the files the
    generator wrote there (the ``files`` manifest of ``synth.json``; for datasets written
    before the manifest existed, the files its metadata CSV names); any other file the user
    put in ``out`` is kept.
    """
    out = Path(out)
    existed = out.exists() and any(out.iterdir())
    if existed:
        if not overwrite:
            raise DataError(f"{out} already holds files; choose an empty or new --out folder")
        if not (out / "synth.json").exists():
            raise DataError(f"{out} is not a synthetic dataset (no synth.json); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; the dataset folder gets the usual mode
        _write_dataset(tmp, out, settings, progress, t0)
    except OSError as exc:
        if not is_disk_full(exc) or isinstance(exc, DiskFullError):
            raise
        kept = f"the earlier dataset in {out} is intact" if existed else f"nothing was written to {out}"
        raise DiskFullError(
            exc.errno, f"no space left on the device of {out.parent} while generating the synthetic dataset; "
            f"{kept}; free some space or choose another --out, then re-run",
        ) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_dataset(tmp: Path, out: Path, settings: SynthSettings, progress: bool, t0: float) -> None:
    """Render the dataset into ``tmp`` (its own folder beside ``out``), then move it into ``out``.

    Everything that takes disk space happens in ``tmp``; moving into ``out`` only renames and
    deletes, so a full disk never touches an earlier dataset in ``out``."""
    from tqdm.auto import tqdm

    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    rows = plan(settings)
    lesions: dict[int, Lesion] = {}
    bar = tqdm(rows, desc="synth", unit="img", disable=not (progress and sys.stderr.isatty()), leave=False)
    for i, row in enumerate(bar):
        li = row["lesion"]
        if li not in lesions:
            lesions[li] = sample_lesion(np.random.default_rng([settings.seed, 1, li]), row["dx"], settings.difficulty)
        sample = render(lesions[li], np.random.default_rng([settings.seed, 4, i]), settings.size, row["artifacts"])
        iid = row["image_id"]
        Image.fromarray(sample.image).save(tmp / "images" / f"{iid}.jpg", quality=JPEG_QUALITY)
        (tmp / "masks" / f"{iid}_segmentation.png").write_bytes(_encode_png(sample.mask))
        for name, m in sample.artifacts.items():
            (tmp / "masks" / f"{iid}_{name}.png").write_bytes(_encode_png(m))
    cols = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", *ARTIFACTS]
    with open(tmp / METADATA_NAME, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in rows:
            flags = [int(a in row["artifacts"]) for a in ARTIFACTS]
            w.writerow([row[c] for c in cols[:7]] + flags)
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    info = {"version": SYNTH_VERSION, "settings": settings.to_dict(), "classes": list(CLASSES),
            "seconds": round(time.perf_counter() - t0, 3), "files": [*files, "synth.json"]}
    (tmp / "synth.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    owned = _owned_files(out) if out.exists() else set()
    if not (out.exists() and _foreign_files(out, owned)):  # the usual case: swap the whole folder at once
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    else:  # keep the user's files: remove only the generator's old files, move the new ones in
        for rel in owned:
            (out / rel).unlink(missing_ok=True)
        for rel in info["files"]:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)


def _owned_files(out: Path) -> set[str]:
    """Relative paths of the files the generator wrote into ``out`` (its manifest, or its metadata's ids)."""
    info = read_settings(out) or {}
    if isinstance(info.get("files"), list):
        return {str(f) for f in info["files"]}
    owned = {"synth.json", METADATA_NAME}
    try:  # written before the manifest: the images and masks of the ids its metadata lists
        with open(out / METADATA_NAME, newline="", encoding="utf-8") as fh:
            ids = [r["image_id"] for r in csv.DictReader(fh)]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        ids = []
    for iid in ids:
        owned.add(f"images/{iid}.jpg")
        owned.add(f"masks/{iid}_segmentation.png")
        owned.update(f"masks/{iid}_{name}.png" for name in ARTIFACTS)
    return owned


def _foreign_files(out: Path, owned: set[str]) -> list[str]:
    """Files in ``out`` that the generator did not write (not in ``owned``: the user's own)."""
    return sorted(rel for p in out.rglob("*") if p.is_file() and (rel := p.relative_to(out).as_posix()) not in owned)


def read_settings(root: str | Path) -> dict | None:
    """The ``synth.json`` of a generated dataset, or None."""
    path = Path(root) / "synth.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None
