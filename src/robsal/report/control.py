"""The report section "Can these maps see a shortcut?" of a positive control (``robsal control``).

:func:`control_section` returns the section as one self-contained HTML fragment (its own scoped
style, pictures as ``data:`` URIs, every value escaped by Jinja2's autoescape) built from
``RUN/control/summary.json`` and the examples of the highest rate
(``RUN/p<rate>/control/examples.npz``); None when the folder holds no control.
:func:`write_page` wraps it into ``RUN/control/report.html``. Template:
``templates/control.html.j2``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from robsal.experiments.control import CONTROL_DIR, rate_folder
from robsal.io import read_json, write_text
from robsal.metrics.shortcut import DETECTS, DOES_NOT, describe_test

TEMPLATE = "control.html.j2"


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _ci(mean: Any, low: Any, high: Any, fmt: str = "{:.2f}") -> str:
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return ""
    if low is None or high is None:
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def _png(fig) -> str:  # noqa: ANN001
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _display(m: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its 99th percentile (0 stays 0)."""
    m = np.abs(np.asarray(m, np.float64))
    top = np.percentile(m, 99) if m.size else 0.0
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)


def _short(method: str) -> str:
    return method.replace("integrated_gradients_", "IG ")[:16]


def _example_figure(z: Any, i: int, models: list[str], methods: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(3, 2 * len(methods))
    fig, axes = plt.subplots(1 + len(models), cols, figsize=(1.25 * cols, 1.35 * (1 + len(models))), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    with_, without, mask = z["with"][i].transpose(1, 2, 0), z["without"][i].transpose(1, 2, 0), z["mask"][i]
    # the mask in cyan on black, as its outline on the maps: in white it would vanish into the page
    # wherever the artifact touches the border (a ruler along an edge)
    mask_cmap = matplotlib.colors.ListedColormap(["black", "cyan"])
    for ax, img, title in ((axes[0, 0], with_, "with"), (axes[0, 1], without, "without"), (axes[0, 2], mask, "mask")):
        ax.imshow(img, cmap=mask_cmap if img.ndim == 2 else None, vmin=0, vmax=255 if img.ndim == 3 else 1)
        ax.set_title(title, fontsize=7)
    for r, name in enumerate(models, 1):
        for c, method in enumerate(methods):
            for side, key in enumerate(("with", "without")):
                ax = axes[r, 2 * c + side]
                ax.imshow(_display(z[f"{key}__{name}__{method}"][i]), cmap="inferno", vmin=0, vmax=1)
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.4)
                ax.set_title(f"{_short(method)}\n{key}" if r == 1 else key, fontsize=6)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
    return _png(fig)


def _rate_key(r: float) -> str:
    return f"{float(r):g}"


def control_section(run_dir: str | Path) -> str | None:
    """The section's HTML fragment for a control folder, or None when ``run_dir/control/summary.json`` is absent."""
    run_dir = Path(run_dir)
    path = run_dir / CONTROL_DIR / "summary.json"
    if not path.exists():
        return None
    s = read_json(path)
    rates = [float(r) for r in s.get("rates", [])]
    models = list(s.get("models", []))
    ci_pct = round(100 * (1 - float(s.get("alpha", 0.05))))

    rel: dict[tuple, dict] = {(r["rate"], r["model"], r["group"], r["metric"]): r for r in s.get("reliance", [])}
    reliance_rows = []
    for rate in rates:
        for name in models:
            def cell(group: str, metric: str) -> str:
                x = rel.get((rate, name, group, metric)) or {}
                fmt = "{:.0%}" if metric == "flip" else "{:+.2f}"
                return _ci(x.get("mean"), x.get("low"), x.get("high"), fmt)
            n = (rel.get((rate, name, "all", "flip")) or {}).get("n", "")
            reliance_rows.append({"rate": _rate_key(rate), "model": name, "flip_planted": cell("planted", "flip"),
                                  "drop_planted": cell("planted", "prob_drop"), "flip_other": cell("other", "flip"),
                                  "drop_other": cell("other", "prob_drop"), "n": n})
    detection_rows = [{
        "rate": _rate_key(d["rate"]), "model": d["model"], "method": d["method"],
        "share": _ci(d.get("share"), d.get("share_low"), d.get("share_high")), "area": _num(d.get("area")),
        "lift": _ci(d.get("lift"), d.get("lift_low"), d.get("lift_high")),
        "auroc": _ci(d.get("flip_auroc"), d.get("flip_auroc_low"), d.get("flip_auroc_high")), "n": d.get("n", ""),
    } for d in s.get("detection", [])]
    detection_verdicts = []
    for v in s.get("verdicts", []):
        if v.get("kind") != "detection":
            continue
        cls = "yes" if v["verdict"] == DETECTS else "no" if v["verdict"] == DOES_NOT else "na"
        tests = [t for t in v.get("tests", []) if t.get("p_holm") is not None]
        detail = "; ".join(describe_test({**t, **{k: (float("nan") if t.get(k) is None else t[k])
                                                 for k in ("p_holm", "low", "high", "diff", "auroc") if k in t}})
                           for t in tests)
        if v.get("reason") and v["verdict"] != DETECTS:
            detail = f"{v['reason']}. {detail}".strip()
        detection_verdicts.append({"model": v["model"], "method": v["method"], "verdict": v["verdict"], "cls": cls,
                                   "auroc": _ci(v.get("model_auroc"), v.get("model_auroc_low"), v.get("model_auroc_high")),
                                   "detail": detail})
    paired_lines = [v["line"] for v in s.get("verdicts", []) if v.get("kind") in ("reliance", "visibility")]
    gate_notes = [f"p={k}: {'; '.join(g.get('reasons') or [])}" for k, g in (s.get("gates") or {}).items()
                  if not g.get("comparable", True)]

    examples, example_rate = [], ""
    if rates:
        example_rate = _rate_key(rates[-1])
        npz = run_dir / rate_folder(rates[-1]) / CONTROL_DIR / "examples.npz"
        if npz.exists():
            per_image = _per_image(run_dir / rate_folder(rates[-1]) / CONTROL_DIR / "per_image.csv")
            with np.load(npz, allow_pickle=False) as z:
                ex_models = [str(m) for m in z["models"]]
                ex_methods = [str(m) for m in z["methods"]]
                for i, iid in enumerate(str(x) for x in z["image_ids"]):
                    ms = []
                    for name in ex_models:
                        row = per_image.get((name, iid), {})
                        ms.append({"name": name, "p_with": _num(row.get("p_with")), "p_without": _num(row.get("p_without")),
                                   "flip": bool(row.get("flip", 0))})
                    examples.append({"image_id": iid, "carried": bool(z["carried"][i]), "models": ms,
                                     "src": _example_figure(z, i, ex_models, ex_methods)})
    files = ["control/summary.json", "control/reliance.csv", "control/detection.csv", "control/verdicts.csv",
             "p<rate>/control/per_image.csv", "p<rate>/control/shares.csv"]
    return _env().get_template(TEMPLATE).render(
        s=s, rates_text=", ".join(_rate_key(r) for r in rates), reliance_rows=reliance_rows,
        detection_rows=detection_rows, detection_verdicts=detection_verdicts, paired_lines=paired_lines,
        gate_notes=gate_notes, examples=examples, example_rate=example_rate, ci_text=f"{ci_pct} %",
        files_text=", ".join(files),
    )


def _per_image(path: Path) -> dict[tuple[str, str], dict]:
    if not path.exists():
        return {}
    df = pd.read_csv(path, dtype={"image_id": str})
    return {(str(r["model"]), str(r["image_id"])): r for r in df.to_dict("records")}


def write_page(run_dir: str | Path) -> Path | None:
    """``RUN/control/report.html``: the section as a page of its own (None when there is no control)."""
    run_dir = Path(run_dir)
    body = control_section(run_dir)
    if body is None:
        return None
    title = html.escape(f"robsal positive control: {run_dir.name}")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto;"
            "padding:0 1em;line-height:1.4}</style></head><body>\n" + body + "\n</body></html>\n")
    out = run_dir / "control" / "report.html"
    write_text(out, page)
    return out
