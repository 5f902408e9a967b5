"""Pictures for the report: saliency maps with the paper's normalisation, images with
mask outlines, training curves. Every function returns arrays or PNG bytes; the HTML
layer decides where the bytes go (embedded or beside the report).

Matplotlib is used through its object API (``Figure`` + Agg canvas), never through
``pyplot``, so building a report changes no global state of the caller.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from scipy import ndimage

# Paper (Appendix B): "visualized as single-colored heatmaps". We use a sequential
# colormap whose lightness rises monotonically (inferno); it reads as one intensity
# scale, stays legible on screens, and in grey-scale print it is a single-colour map.
MAP_CMAP = "inferno"
CAP_PERCENTILE = 99.0  # paper Appendix B, after Smilkov et al. (SmoothGrad)
OUTLINE_RGB = (0, 230, 118)  # lesion outline colour (green)
ARTIFACT_RGB = (0, 190, 255)  # artifact masks (hair, ruler, ...) in the dataset examples (light blue)


def map_range(maps: np.ndarray, percentile: float = CAP_PERCENTILE) -> tuple[float, float]:
    """(low, cap) used to normalise one map or a stack of maps on one scale.

    ``cap`` is the ``percentile``-th percentile of all values. ``low`` is 0: maps are
    non-negative (sum of |attribution| over channels, or a ReLU'd Grad-CAM), and the
    paper rescales by the cap alone. (A min-max rescale would stretch a nearly
    constant map, e.g. a 1x1 Grad-CAM at tiny input sizes, so that float noise looks
    like structure; here a constant positive map shows as uniformly salient.) Should
    a map hold negative values, ``low`` is its minimum.
    """
    values = np.asarray(maps, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot normalise an empty saliency map")
    cap = float(np.percentile(values, percentile))
    low = float(min(values.min(), 0.0))
    return low, cap


def normalise_map(
    saliency: np.ndarray, *, value_range: tuple[float, float] | None = None, percentile: float = CAP_PERCENTILE
) -> np.ndarray:
    """Paper normalisation (Appendix B): cap at the 99th percentile, rescale to [0, 1].

    saliency:    (H, W) float map (any units).
    value_range: (low, cap) from :func:`map_range`; None = this map's own range (the
                 paper's per-map scale). Passing the range of several maps puts them on
                 one shared scale.
    Returns (H, W) float32 in [0, 1]; an all-zero map stays all zeros.
    """
    m = np.asarray(saliency, dtype=np.float64)
    low, cap = map_range(m, percentile) if value_range is None else value_range
    if not np.isfinite(low) or not np.isfinite(cap):
        raise ValueError("saliency map holds non-finite values")
    if cap <= low:
        return np.zeros(m.shape, dtype=np.float32)
    return ((np.clip(m, low, cap) - low) / (cap - low)).astype(np.float32)


def colorize(map01: np.ndarray, cmap: str = MAP_CMAP) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB through a matplotlib colormap."""
    rgba = colormaps[cmap](np.clip(map01, 0.0, 1.0))  # (H, W, 4) float in [0, 1]
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def chw_to_rgb(image: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 (the PreparedData layout) -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {image.shape}")
    return np.ascontiguousarray(image.transpose(1, 2, 0)).astype(np.uint8)


def enlarge(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of (H, W) or (H, W, C) by an integer factor -> (kH, kW[, C])."""
    if factor == 1:
        return np.asarray(pixels)
    return np.repeat(np.repeat(np.asarray(pixels), factor, axis=0), factor, axis=1)


def outline(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a binary mask: (H, W) {0,1} -> (H, W) bool (pixels on the edge)."""
    m = np.asarray(mask).astype(bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def draw_outline(rgb: np.ndarray, mask: np.ndarray | None, color: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
    """Copy of ``rgb`` (H, W, 3) uint8 with the boundary of ``mask`` (H, W) painted in ``color``."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    if mask is not None and np.any(mask):
        out[outline(mask)] = np.asarray(color, dtype=np.uint8)
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes (lossless)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"png_bytes needs uint8 pixels, got {pixels.dtype}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def map_png(saliency: np.ndarray, value_range: tuple[float, float] | None = None) -> bytes:
    """One saliency map as a colour PNG on the paper's scale (own or shared range)."""
    return png_bytes(colorize(normalise_map(saliency, value_range=value_range)))


def colorbar_png(width: int = 256, height: int = 12, cmap: str = MAP_CMAP) -> bytes:
    """Horizontal colour bar 0 (left) -> 1 (right) for the map scale."""
    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return png_bytes(colorize(ramp, cmap))


def _figure_png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def training_curves_png(histories: Mapping[str, Sequence[Mapping[str, object]]]) -> bytes | None:
    """Loss and accuracy per epoch for every model (``history.jsonl`` rows).

    The x axis counts epochs over both phases (Appendix A: phase 1 trains the head,
    phase 2 the whole network); a dotted line marks where a model's phase changes.
    Returns None when no history has a number to plot.
    """
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    plotted = False
    for i, (name, rows) in enumerate(histories.items()):
        color = f"C{i % 10}"
        x = np.arange(1, len(rows) + 1)
        for key, ax, style, label in (
            ("train_loss", ax_loss, "-", f"{name} train"),
            ("val_loss", ax_loss, "--", f"{name} val"),
            ("train_accuracy", ax_acc, "-", f"{name} train"),
            ("val_accuracy", ax_acc, "--", f"{name} val"),
        ):
            y = np.array([_as_float(r.get(key)) for r in rows], dtype=float)
            if np.isfinite(y).any():
                ax.plot(x, y, style, color=color, marker="o", markersize=3, label=label)
                plotted = True
        phases = [r.get("phase") for r in rows]
        for j in range(1, len(phases)):
            if phases[j] != phases[j - 1]:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(j + 0.5, color=color, linestyle=":", linewidth=1)
    if not plotted:
        return None
    ax_loss.set(xlabel="epoch (phase 1 then phase 2)", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch (phase 1 then phase 2)", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def _as_float(value: object) -> float:
    if isinstance(value, bool) or value is None:
        return float("nan")
    if isinstance(value, (int, float, np.number)):
        return float(value)
    return float("nan")
