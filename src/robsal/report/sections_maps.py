"""Contexts of the report's saliency sections: the interactive viewer, the static grids
(standard next to robust, paper Figures 1/5) and the measured failure cases (paper Figure 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from robsal.report import figures as F
from robsal.report.collect import RunContents
from robsal.report.context import (
    Page, class_name, first_set, input_rgb, model_label, saliency_images, target_name,
)
from robsal.report.format import fmt, pct
from robsal.rundir import Selection

# --------------------------------------------------------------------------- viewer


def viewer(page: Page) -> dict[str, Any]:
    """The viewer's JSON payload (pictures as ``src`` values) and how many images it holds."""
    run = page.run
    if not run.saliency:
        return {"payload": None}
    models = list(run.saliency)
    images = [viewer_image(page, iid, models) for iid in saliency_images(run)[:page.viewer_max_images]]
    payload = {"models": models, "model_labels": [model_label(run, m) for m in models], "methods": run.methods,
               "images": images}
    return {"payload": payload, "shown": len(images), "explained": len(saliency_images(run))}


def viewer_image(page: Page, iid: str, models: list[str]) -> dict[str, Any]:
    """One image of the viewer: its input and, per method and model, the map on its own and the shared scale."""
    run = page.run
    target = target_name(run, iid)
    entry: dict[str, Any] = {"id": iid, "label": f"{iid} ({target})", "caption": f"{iid}, class {target}", "maps": {}}
    for method in run.methods:
        stack = {}
        for m in models:
            s = run.saliency[m].get(method)
            r = s.row(iid) if s is not None else None
            if r is not None:
                stack[m] = (s.maps[r], class_name(run, s.predictions[r]))
        if not stack:
            continue
        # one range over all models' maps of this image and method (values pooled, so
        # maps of different sizes still share it)
        shared = F.map_range(np.concatenate([v[0].ravel() for v in stack.values()]))
        entry["maps"][method] = {
            m: {"own": page.map_png(v[0], "map"), "shared": page.map_png(v[0], "map_shared", shared),
                "prediction": v[1]}
            for m, v in stack.items()
        }
    rgb = input_rgb(run, iid)  # shown in the same square box as the maps, so they align
    entry["input"] = page.png(rgb, "input") if rgb is not None else None
    return entry


# --------------------------------------------------------------------------- grids


def grids(page: Page) -> dict[str, Any]:
    """Per method: a row per image (up to ``grid_per_class`` per class), a column per model."""
    run = page.run
    if not run.saliency:
        return {"methods": None}
    models = list(run.saliency)
    ids = grid_images(run, page.grid_per_class)
    rows_in = []
    for iid in ids:
        rgb = input_rgb(run, iid) if run.data is not None else None
        rows_in.append({"id": iid, "target": target_name(run, iid),
                        "input": page.png(rgb, "input") if rgb is not None else None})
    methods = []
    for method in run.methods:
        rows = []
        for row in rows_in:
            maps = []
            for m in models:
                s = run.saliency[m].get(method)
                r = s.row(row["id"]) if s is not None else None
                maps.append(None if r is None else {"src": page.map_png(s.maps[r], "map"), "alt": f"{method} {m}",
                                                    "prediction": class_name(run, s.predictions[r])})
            rows.append({**row, "maps": maps})
        methods.append({"name": method, "rows": rows})
    return {"methods": methods, "with_input": run.data is not None,
            "labels": [model_label(run, m) for m in models], "colorbar": page.store.add(F.colorbar_png(), "colorbar"),
            "per_class": page.grid_per_class, "explained": len(saliency_images(run)),
            "viewer_max": page.viewer_max_images, "selection": selection_note(run)}


def grid_images(run: RunContents, per_class: int) -> list[str]:
    """Up to ``per_class`` explained images per target class, in saliency order."""
    chosen: dict[int, list[str]] = {}
    for iid in saliency_images(run):
        first = first_set(run, iid)
        t = int(first[0].targets[first[1]]) if first else -1
        if len(chosen.setdefault(t, [])) < per_class:
            chosen[t].append(iid)
    return [i for t in sorted(chosen) for i in chosen[t]]


def selection_note(run: RunContents) -> dict[str, Any] | None:
    """How the explained images were chosen, and which classes fell short (saliency/selection.json)."""
    sel = run.selection
    if sel is None:
        return None
    k = sel.n_per_class
    return {"correct": sel.rule == Selection.CORRECT, "n_per_class": k,
            "counts": ", ".join(f"{c} {int(n)}" for c, n in sel.selected.items()),
            "short": ", ".join(c for c, n in sel.selected.items() if k is not None and n < k)}


# --------------------------------------------------------------------------- failure cases


def failures(page: Page) -> dict[str, Any]:
    """Per model: the images whose map is most off the lesion, most on an artifact, and noisiest."""
    run = page.run
    if run.per_image is None or run.per_image.empty:
        return {"available": False}
    methods = list(dict.fromkeys(run.per_image["method"].astype(str)))
    method = "gradient" if "gradient" in methods else (methods[0] if methods else None)
    table = failure_metric_table(run, method) if method else pd.DataFrame()
    if table.empty:
        return {"available": True, "method": None}
    found = list(dict.fromkeys(table["model"]))
    order = [m for m in list(run.models) + list(run.saliency) if m in found]
    models = []
    for model in list(dict.fromkeys(order + found)):
        tiles = []
        for kind, g in table[table["model"] == model].groupby("kind", sort=False):
            for row in g.sort_values("share", ascending=False).head(page.failures_per_model).itertuples(index=False):
                tiles.append(failure_tile(page, model, method, kind, row))
        models.append({"label": model_label(run, model), "tiles": tiles})
    return {"available": True, "method": method, "models": models}


def failure_tile(page: Page, model: str, method: str, kind: str, row: Any) -> dict[str, Any]:
    """The input and the map of one failure case, its measured value and kind."""
    pictures = []
    rgb = input_rgb(page.run, row.image_id)
    if rgb is not None:
        pictures.append({"alt": "input", "src": page.png(rgb, "fail_input")})
    s = page.run.saliency.get(model, {}).get(method)
    r = s.row(row.image_id) if s is not None else None
    if r is not None:
        pictures.append({"alt": "map", "src": page.map_png(s.maps[r], "fail_map")})
    value = fmt(row.share, 3) if kind.startswith("total variation") else pct(row.share)
    return {"pictures": pictures, "value": value, "kind": kind, "id": row.image_id}


def failure_metric_table(run: RunContents, method: str) -> pd.DataFrame:
    """Per (model, image): share of saliency outside the lesion and largest artifact share."""
    df = run.per_image
    df = df[df["method"].astype(str) == method]
    df = df.assign(value=pd.to_numeric(df["value"], errors="coerce"))
    out = []
    mass = df[df["metric"].astype(str) == "relevance_mass"]
    for row in mass.itertuples(index=False):
        if np.isfinite(row.value):
            out.append({"model": str(row.model), "image_id": str(row.image_id), "kind": "outside the lesion",
                        "share": 1.0 - float(row.value)})
    arts = df[df["metric"].astype(str).str.startswith("artifact_share")]
    for (model, iid), g in arts.groupby(["model", "image_id"]):
        g = g[np.isfinite(g["value"])]
        if len(g):
            best = g.loc[g["value"].idxmax()]
            name = str(best["metric"]).removeprefix("artifact_share").strip("_") or "artifacts"
            out.append({"model": str(model), "image_id": str(iid), "kind": f"on {name}", "share": float(best["value"])})
    # paper Fig. 2, lesion 3: "the saliency map can be noisy" -> the highest total variation
    tv = df[df["metric"].astype(str) == "total_variation"]
    for row in tv.itertuples(index=False):
        if np.isfinite(row.value):
            out.append({"model": str(row.model), "image_id": str(row.image_id), "kind": "total variation (noisy)",
                        "share": float(row.value)})
    return pd.DataFrame(out, columns=["model", "image_id", "kind", "share"])
