"""``RUN/report.html``: one browsable page for a run (issue "The main job and its report").

Sections: run status (what is done, what is missing), dataset, exact config,
training curves and accuracy, saliency grids (paper Fig. 1/5 style: standard next
to robust), an interactive viewer (pick an image and a method, slide between
models), failure cases (paper Fig. 2, with the share measured), metrics and
statistics, the stages' figures, limitations.

Every string that comes from data (class names, image ids, file names, CSV/JSON
fields, the config) passes through :func:`html.escape`; the viewer's data is JSON
with ``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc. and is written into the page
with ``textContent`` only. A Content-Security-Policy forbids every network load, so
the page is guaranteed to read offline.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robsal.errors import DataError
from robsal.io import write_text
from robsal.report import figures as F
from robsal.report.assets import EMBED_LIMIT_BYTES, ImageStore, estimate_png_bytes
from robsal.report.collect import RunContents, SaliencySet, collect
from robsal.rundir import Gate, ModelMetrics, ModelRecord, Selection, Summary
from robsal.rundir import writes_run

REPORT_NAME = "report.html"
EXAMPLES_PER_CLASS = 4
GRID_PER_CLASS = 2  # images per class in the static saliency grids
FAILURES_PER_MODEL = 3
VIEWER_MAX_IMAGES = 60

CSP = (
    "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _template(name: str) -> str:
    return resources.files("robsal.report").joinpath("templates", name).read_text(encoding="utf-8")


def _json_for_script(obj: Any) -> str:
    """JSON that cannot end its <script> element or start markup."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return e(value)
    if isinstance(value, (int, np.integer)):
        return e(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) < 10 ** (-digits) or abs(v) >= 1e6):
            return e(f"{v:.2e}")
        return e(f"{v:.{digits}f}")
    return e(value)


def _pct(value: Any) -> str:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
        return e(f"{100.0 * float(value):.1f}%")
    return "&ndash;"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], text_cols: Sequence[int] = (0,), cls: str = "") -> str:
    """Table from already-escaped cell HTML."""
    th = "".join(f'<th class="{"text" if i in text_cols else ""}">{h}</th>' for i, h in enumerate(header))
    body = []
    for row in rows:
        body.append(
            "<tr>" + "".join(f'<td class="{"text" if i in text_cols else ""}">{c}</td>' for i, c in enumerate(row)) + "</tr>"
        )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _missing_box(items: Sequence[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{e(s)}</li>" for s in items)
    return f'<div class="missing"><strong>Not in this report:</strong><ul>{lis}</ul></div>'


# --------------------------------------------------------------------------- helpers on run data


def _model_label(run: RunContents, name: str) -> str:
    info = run.models.get(name)
    eps = None
    if info and info.record and info.record.eps is not None:
        eps = info.record.eps
    elif run.config and isinstance(run.config.get("models"), list):
        for m in run.config["models"]:
            if isinstance(m, dict) and str(m.get("name")) == name:
                eps = m.get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        return f"{name} (standard)" if float(eps) == 0 else f"{name} (eps={float(eps):g})"
    return name


def _class_name(run: RunContents, index: Any) -> str:
    classes = run.classes
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    return classes[i] if 0 <= i < len(classes) else str(i)


DISPLAY_PX = 128  # inputs smaller than this are enlarged (nearest) before outlines are drawn


def _input_rgb(run: RunContents, image_id: str, with_mask: bool = True, with_artifacts: bool = False) -> np.ndarray | None:
    """(H', W', 3) uint8 of a run image with its lesion outline (and artifact outlines), or None.

    Small images (the tiny/quick presets: 32-64 px) are enlarged by an integer factor
    (nearest neighbour, so no pixel is invented) to about DISPLAY_PX before the outlines are
    drawn: a one-pixel outline then covers a quarter of a source pixel instead of a whole one.
    """
    if run.data is None:
        return None
    try:
        row = int(run.data.rows_of([str(image_id)])[0])
    except DataError:
        return None  # an id the run's data does not hold (e.g. a map of another dataset)
    rgb = F.chw_to_rgb(run.data.images[row])  # (S, S, 3)
    k = max(1, DISPLAY_PX // rgb.shape[0])
    rgb = F.enlarge(rgb, k)  # (kS, kS, 3)
    if with_artifacts:
        for amask in run.data.artifact_masks.values():
            rgb = F.draw_outline(rgb, F.enlarge(amask[row], k), F.ARTIFACT_RGB)
    if with_mask and run.data.masks is not None and bool(run.data.has_mask[row]):
        rgb = F.draw_outline(rgb, F.enlarge(run.data.masks[row], k))
    return rgb


def _saliency_images(run: RunContents) -> list[str]:
    """Image ids explained in this run, in the order of the first model's first method."""
    order: list[str] = []
    for per_method in run.saliency.values():
        for s in per_method.values():
            for iid in s.image_ids:
                if iid not in order:
                    order.append(iid)
    return order


def _first_set(run: RunContents, image_id: str) -> tuple[SaliencySet, int] | None:
    for per_method in run.saliency.values():
        for s in per_method.values():
            r = s.row(image_id)
            if r is not None:
                return s, r
    return None


# --------------------------------------------------------------------------- sections


def _headline(run: RunContents) -> str:
    """Three kinds of line a reader wants first: accuracies, verdicts, what is missing."""
    items = []
    for name, info in run.models.items():
        mt = _metrics(info.record)
        rob = ", ".join(f"eps={k}: {_pct(v)}" for k, v in (mt.robust_accuracy or {}).items())
        recall = _recall_text(run, mt.per_class_accuracy)
        items.append(
            f"<li><strong>{e(_model_label(run, name))}</strong>{e(_radius_text(info.record))}: "
            f"clean accuracy {_pct(mt.clean_accuracy)}, "
            f"balanced {_pct(mt.balanced_accuracy)}{'; robust ' + rob if rob else ''}"
            f"{'; recall ' + e(recall) if recall else ''}</li>"
        )
    gate = _gate(run)
    if gate is not None and not gate.comparable:
        items.append(
            f'<li class="verdict-na"><strong>Not comparable</strong> ({e(gate.rule or "competence gate")}): '
            f"{e('; '.join(gate.reasons or []))}. The verdicts below are withheld; the paired differences "
            "are descriptions only.</li>"
        )
    elif gate is not None:
        items.append(f'<li class="note">Competence gate passed: {e(gate.rule or "")}.</li>')
    verdicts = run.summary.verdicts if run.summary is not None else []
    for v in verdicts:
        if v.method in (None, "gradient") or len(verdicts) <= 6:
            items.append(f'<li class="{_verdict_class(v.verdict or "")}">{e(v.text)}</li>')
    if not items:
        return ""
    return f"<h3>At a glance</h3><ul>{''.join(items)}</ul>"


def _metrics(record: ModelRecord | None) -> ModelMetrics:
    """The model's metrics (empty while it has no model.json)."""
    return record.metrics if record is not None and record.metrics is not None else ModelMetrics()


def _radius_text(record: ModelRecord | None) -> str:
    """', trained against an L2 radius of 0.33 at 64 px (pixels rule)' for an adversarially trained model, else ''."""
    if record is None or record.eps is None or record.eps <= 0 or record.eps_l2 is None:
        return ""
    radius, rule = record.eps_l2, record.eps_scaling or {}
    size, name = rule.get("image_size"), rule.get("rule")
    where = f" at {size} px" if size else ""
    how = f" ({name} rule)" if name else ""
    return f", trained against an L2 radius of {radius:.2f}{where}{how}"


def _gate(run: RunContents) -> Gate | None:
    """The competence gate recorded in metrics/summary.json (robsal.metrics.gate), if any."""
    return run.summary.gate if run.summary is not None else None


def _recall_text(run: RunContents, per_class: dict[str, float | None] | None) -> str:
    """'mel 0.62, nv 0.80, bkl 0.75' from a model.json per_class_accuracy (class -> recall)."""
    if per_class is None:
        return ""
    names = [c for c in run.classes if c in per_class] + [c for c in per_class if c not in run.classes]
    return ", ".join(f"{c} {per_class[c]:.2f}" if per_class[c] is not None else f"{c} n/a" for c in names)


def _gate_html_from(gate: Gate) -> str:
    """Per-class recall of every model and explained images per class, next to the verdicts."""
    recall = gate.recall or {}
    explained = gate.explained or {}
    classes: list[str] = []  # in the order the gate recorded them (the run's class order)
    for r in [*recall.values(), explained]:
        classes += [c for c in r if c not in classes]
    thr = gate.min_recall
    k_min = gate.min_explained_per_class

    def cell(v: Any, low: bool) -> str:
        text = _fmt(v, 2)
        return f'<span class="verdict-na">{text}</span>' if low else text

    rows = []
    for name, rec in recall.items():
        rows.append([e(name)] + [
            cell(rec.get(c), rec.get(c) is None or (thr is not None and rec[c] < thr)) for c in classes
        ] + [_fmt((gate.balanced_accuracy or {}).get(name), 3)])
    if explained:
        rows.append(["<em>explained images</em>"] + [
            cell(explained.get(c), k_min is not None and explained.get(c, 0) < k_min) for c in classes
        ] + [""])
    status = ('<strong class="verdict-supported">comparable</strong>' if gate.comparable
              else '<strong class="verdict-na">not comparable</strong>')
    head = (f"<h3>Competence gate</h3><p class=\"note\">{status}: {e(gate.rule or '')}. Test-split recall "
            "per class (highlighted: below the threshold).</p>")
    return head + _table(["model"] + [f"recall {e(c)}" for c in classes] + ["balanced accuracy"], rows)


def _section_status(run: RunContents) -> str:
    gate = _gate(run)
    parts = ['<section id="status"><h2>Run status</h2>', _headline(run), _gate_html_from(gate) if gate else ""]
    if run.stages:
        rows = []
        for stage, rec in run.stages.stages.items():
            rows.append([e(stage), e(rec.finished or ""), _fmt(rec.seconds, 1)])
        parts.append(_table(["stage", "finished", "seconds"], rows, text_cols=(0, 1)))
    else:
        parts.append('<p class="note">stages.json is absent: no stage has recorded completion.</p>')
    parts.append(_missing_box(run.missing))
    parts.append("</section>")
    return "".join(parts)


def _section_dataset(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="dataset"><h2>Dataset</h2>']
    cfg_data = run.config.get("data", {}) if run.config else {}
    if isinstance(cfg_data, dict) and cfg_data:
        src = cfg_data.get("source")
        root = cfg_data.get("root")
        where = "built-in synthetic dermoscopy images" if src == "synthetic" and not root else f"{src} at {root}"
        parts.append(
            f"<p>Source: {e(where)}; model input {e(cfg_data.get('image_size'))}&times;"
            f"{e(cfg_data.get('image_size'))} px; splits by {e(cfg_data.get('split_by', 'lesion'))}.</p>"
        )
    if run.splits is not None:
        df = run.splits
        counts = pd.crosstab(df["label"].astype(str), df["split"].astype(str))
        split_order = [s for s in ("train", "val", "test") if s in counts.columns] + [
            s for s in counts.columns if s not in ("train", "val", "test")
        ]
        class_order = [c for c in run.classes if c in counts.index] + [c for c in counts.index if c not in run.classes]
        counts = counts.reindex(index=class_order, columns=split_order, fill_value=0)
        rows = [[e(c)] + [e(int(v)) for v in counts.loc[c]] + [e(int(counts.loc[c].sum()))] for c in counts.index]
        rows.append(["<strong>all</strong>"] + [f"<strong>{int(counts[s].sum())}</strong>" for s in split_order] + [f"<strong>{len(df)}</strong>"])
        parts.append("<h3>Images per class and split</h3>")
        parts.append(_table(["class"] + [e(s) for s in split_order] + ["total"], rows))
        extra = []
        if "lesion_id" in df.columns:
            extra.append(f"{df['lesion_id'].nunique()} distinct lesions")
        if "fold" in df.columns:
            folds = pd.to_numeric(df["fold"], errors="coerce").dropna()
            if len(folds):
                extra.append(f"{folds.nunique()} cross-validation folds in train")
        if extra:
            parts.append(f'<p class="note">{e("; ".join(extra))}.</p>')
    parts.append("<h3>Example images per class</h3>")
    if run.data is None or run.splits is None:
        parts.append('<p class="note">Example images are not available (see "Not in this report" above).</p>')
    else:
        parts.append(
            '<p class="note">Green line: the lesion mask outline; blue: the outlines of the artifact masks '
            "(named below each image).</p>"
        )
        data = run.data
        split_of = data.splits["split"].astype(str).to_numpy()
        for ci, cname in enumerate(data.classes):
            rows = np.flatnonzero(np.asarray(data.labels) == ci)
            is_test = split_of[rows] == "test"
            chosen = np.concatenate([rows[is_test], rows[~is_test]])[:EXAMPLES_PER_CLASS]  # test images first
            tiles = []
            for r in chosen:
                iid = str(data.splits["image_id"].iloc[r])
                rgb = _input_rgb(run, iid, with_artifacts=True)
                arts = [n for n, m in data.artifact_masks.items() if np.any(m[r])]
                mask_note = "" if data.masks is not None and bool(data.has_mask[r]) else " (no mask)"
                tiles.append(
                    f'<figure><img class="tile" alt="{e(iid)}" src="{store.add(F.png_bytes(rgb), "example")}">'
                    f"<figcaption>{e(iid)}{e(mask_note)}<br>{e(', '.join(arts) or 'no artifacts')}</figcaption></figure>"
                )
            parts.append(f"<h3>{e(cname)}</h3><div class=\"tiles\">{''.join(tiles) or '<p class=note>no images</p>'}</div>")
    parts.append("</section>")
    return "".join(parts)


def _section_config(run: RunContents) -> str:
    info = run.run_info
    bits = [f"{k}: {v}" for k, v in (("config_name", info.config_name), ("seed", info.seed), ("commit", info.commit),
                                      ("created", info.created)) if v is not None]
    head = f'<p class="note">{e("; ".join(bits))}</p>' if bits else ""
    body = (
        f"<details><summary>RUN/config.yaml (click to show)</summary><pre>{e(run.config_text)}</pre></details>"
        if run.config_text is not None
        else '<p class="note">config.yaml is missing.</p>'
    )
    return f'<section id="config"><h2>Configuration (exact)</h2>{head}{body}</section>'


def _section_training(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="training"><h2>Training and accuracy</h2>']
    if not run.models:
        parts.append('<p class="note">No model has been trained yet.</p></section>')
        return "".join(parts)
    histories = {n: m.history for n, m in run.models.items() if m.history}
    png = F.training_curves_png(histories) if histories else None
    if png is not None:
        parts.append(f'<img class="plot" alt="training curves" src="{store.add(png, "training_curves")}">')
        parts.append('<p class="note">Solid: training set; dashed: validation set. Dotted vertical lines: phase 1 (head) to phase 2 (whole network), Appendix A.</p>')
    else:
        parts.append('<p class="note">No history.jsonl with numbers: training curves are not available.</p>')

    metrics = {n: _metrics(m.record) for n, m in run.models.items()}
    eps_keys: list[str] = []
    for mt in metrics.values():
        for k in (mt.robust_accuracy or {}):
            if str(k) not in eps_keys:
                eps_keys.append(str(k))
    eps_keys.sort(key=lambda k: float(k) if _is_number_text(k) else math.inf)
    classes = run.classes
    header = ["model", "eps (paper units)", "seed", "clean accuracy", "balanced accuracy"]
    header += [f"robust accuracy, eps={e(k)}" for k in eps_keys]
    header += [f"accuracy on {e(c)}" for c in classes]
    rows = []
    for name, info in run.models.items():
        mt = metrics[name]
        rec = info.record or ModelRecord()
        robust = mt.robust_accuracy or {}
        per_class = mt.per_class_accuracy or {}
        pc = [_pct(per_class.get(c)) for c in classes]
        rows.append(
            [e(name), _fmt(rec.eps, 2), _fmt(rec.seed, 0), _pct(mt.clean_accuracy), _pct(mt.balanced_accuracy)]
            + [_pct(robust.get(k)) for k in eps_keys]
            + pc
        )
    parts.append("<h3>Accuracy on the test set</h3>")
    parts.append(_table(header, rows))
    parts.append('<p class="note">Robust accuracy: accuracy under an L2 PGD attack of the given radius (paper units, L2 at 224 px).</p>')

    cms = []
    for name, mt in metrics.items():
        if mt.confusion_matrix:
            cms.append(_confusion_html(name, np.asarray(mt.confusion_matrix, dtype=float), classes))
    if cms:
        parts.append("<h3>Confusion matrices</h3><p class=\"note\">Rows: true class; columns: predicted class; shading: share of the row.</p>")
        parts.append('<div class="tiles" style="gap:24px">' + "".join(cms) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _confusion_html(name: str, cm: np.ndarray, classes: list[str]) -> str:
    k = cm.shape[1]
    names = [classes[i] if i < len(classes) else str(i) for i in range(max(cm.shape))]
    head = "".join(f"<th>{e(names[j])}</th>" for j in range(k))
    rows = []
    for i in range(cm.shape[0]):
        total = cm[i].sum()
        cells = []
        for j in range(k):
            share = cm[i, j] / total if total > 0 else 0.0
            cells.append(f'<td style="background:rgba(36,87,197,{0.85 * share:.3f})">{e(int(cm[i, j]))}</td>')
        rows.append(f'<tr><th class="text">{e(names[i])}</th>{"".join(cells)}</tr>')
    return (
        f'<div><strong>{e(name)}</strong><table><thead><tr><th class="text">true \\ pred</th>{head}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></div>'
    )


def _section_grids(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="saliency"><h2>Saliency maps: standard next to robust</h2>']
    if not run.saliency:
        parts.append('<p class="note">No saliency maps yet.</p></section>')
        return "".join(parts)
    parts.append(
        '<p class="note">Paper Figure 1/5 style. Each map is the sum over RGB channels of |attribution| '
        "(Grad-CAM: the upsampled ReLU'd map), capped at its own 99th percentile and rescaled to [0, 1] "
        f'(Appendix B). <span class="colorbar">0 <img alt="colour scale" src="{store.add(F.colorbar_png(), "colorbar")}"> 1</span></p>'
    )
    models = list(run.saliency)
    ids = _grid_images(run)
    parts.append(
        f'<p class="note">Up to {GRID_PER_CLASS} images per class of the {len(_saliency_images(run))} explained; '
        f"the interactive viewer above browses up to {VIEWER_MAX_IMAGES}.</p>"
    )
    parts.append(_selection_note(run))
    for method in run.methods:
        header = ["image"] + (["input"] if run.data is not None else []) + [e(_model_label(run, m)) for m in models]
        rows = []
        for iid in ids:
            first = _first_set(run, iid)
            target = _class_name(run, first[0].targets[first[1]]) if first else "?"
            cells = [f"{e(iid)}<br>class {e(target)}"]
            if run.data is not None:
                rgb = _input_rgb(run, iid)
                cells.append(f'<img class="tile" alt="input" src="{store.add(F.png_bytes(rgb), "input")}">' if rgb is not None else "&ndash;")
            for m in models:
                s = run.saliency[m].get(method)
                r = s.row(iid) if s is not None else None
                if r is None:
                    cells.append("&ndash;")
                    continue
                pred = _class_name(run, s.predictions[r])
                cells.append(
                    f'<img class="tile" alt="{e(method)} {e(m)}" src="{store.add(F.map_png(s.maps[r]), "map")}">'
                    f"predicts {e(pred)}"
                )
            rows.append(cells)
        parts.append(f"<h3>{e(method)}</h3>" + _table(header, rows, cls="grid"))
    parts.append("</section>")
    return "".join(parts)


def _selection_note(run: RunContents) -> str:
    """How the explained images were chosen, and which classes fell short (saliency/selection.json)."""
    sel = run.selection
    if sel is None:
        return ""
    counts = ", ".join(f"{e(c)} {int(n)}" for c, n in sel.selected.items())
    if sel.rule != Selection.CORRECT:
        return f'<p class="note">Explained images (named by image id): {counts}.</p>'
    k = sel.n_per_class
    short = [c for c, n in sel.selected.items() if k is not None and n < k]
    text = (f'<p class="note">Explained images: test images classified correctly by every model, '
            f"up to {e(k)} per class, as in the paper: {counts}.")
    if short:
        text += (f' <strong>Under-represented: {e(", ".join(short))}</strong> (too few images that every '
                 "model gets right); the maps and metrics say little about these classes.")
    return text + "</p>"


def _grid_images(run: RunContents) -> list[str]:
    """Up to GRID_PER_CLASS explained images per target class, in saliency order."""
    per_class: dict[int, list[str]] = {}
    for iid in _saliency_images(run):
        first = _first_set(run, iid)
        t = int(first[0].targets[first[1]]) if first else -1
        if len(per_class.setdefault(t, [])) < GRID_PER_CLASS:
            per_class[t].append(iid)
    return [i for t in sorted(per_class) for i in per_class[t]]


def _section_viewer(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="viewer-section"><h2>Interactive viewer</h2>']
    if not run.saliency:
        parts.append('<p class="note">No saliency maps yet: nothing to browse.</p></section>')
        return "".join(parts)
    models = list(run.saliency)
    methods = run.methods
    images = []
    for iid in _saliency_images(run)[:VIEWER_MAX_IMAGES]:
        first = _first_set(run, iid)
        target = _class_name(run, first[0].targets[first[1]]) if first else "?"
        entry: dict[str, Any] = {"id": iid, "label": f"{iid} ({target})", "caption": f"{iid}, class {target}", "maps": {}}
        for method in methods:
            stack = {}
            for m in models:
                s = run.saliency[m].get(method)
                r = s.row(iid) if s is not None else None
                if r is not None:
                    stack[m] = (s.maps[r], _class_name(run, s.predictions[r]))
            if not stack:
                continue
            # one range over all models' maps of this image and method (values pooled, so
            # maps of different sizes still share it)
            shared = F.map_range(np.concatenate([v[0].ravel() for v in stack.values()]))
            entry["maps"][method] = {
                m: {
                    "own": store.add(F.map_png(v[0]), "map"),
                    "shared": store.add(F.map_png(v[0], value_range=shared), "map_shared"),
                    "prediction": v[1],
                }
                for m, v in stack.items()
            }
        rgb = _input_rgb(run, iid)  # shown in the same square box as the maps, so they align
        entry["input"] = store.add(F.png_bytes(rgb), "input") if rgb is not None else None
        images.append(entry)
    payload = {"models": models, "model_labels": [_model_label(run, m) for m in models], "methods": methods, "images": images}
    n_all = len(_saliency_images(run))
    if n_all > len(images):
        parts.append(f'<p class="note">The viewer holds the first {len(images)} of the {n_all} explained images.</p>')
    parts.append(
        '<p class="note">Pick an image and a method, then slide (or press &larr; &rarr;) between models. '
        '"Own scale" normalises each map as the paper does; "shared scale" caps all models\' maps of this image '
        "and method at their common 99th percentile, so brightness is comparable across models.</p>"
        '<div class="viewer"><div class="controls">'
        '<label for="viewer-image">Image</label><select id="viewer-image"></select>'
        '<label for="viewer-method">Method</label><select id="viewer-method"></select>'
        '<label for="viewer-model">Model: <strong id="viewer-model-name"></strong></label>'
        '<input type="range" id="viewer-model" min="0" max="0" step="1" value="0">'
        '<div id="viewer-model-buttons"></div>'
        '<label for="viewer-scale">Map scale</label><select id="viewer-scale">'
        '<option value="own">own scale (paper, per map)</option><option value="shared">shared scale over models</option></select>'
        '<label for="viewer-opacity">Overlay opacity</label><input type="range" id="viewer-opacity" min="0" max="100" value="60">'
        "</div>"
        '<div><div class="pictures">'
        '<figure><img id="viewer-input" class="big" alt="input image">input (green: lesion outline)</figure>'
        '<figure><img id="viewer-map" class="big" alt="saliency map">saliency map</figure>'
        '<figure><div class="stack"><img id="viewer-overlay-base" class="big" alt="input under the map">'
        '<img id="viewer-overlay-map" class="big" alt="map over the input"></div>overlay</figure>'
        '</div><div id="viewer-caption"></div></div></div>'
        f'<script type="application/json" id="viewer-data">{_json_for_script(payload)}</script>'
    )
    parts.append("</section>")
    return "".join(parts)


def _failure_metric_table(run: RunContents, method: str) -> pd.DataFrame:
    """Per (model, image): share of saliency outside the lesion and largest artifact share."""
    df = run.per_image
    df = df[df["method"].astype(str) == method]
    df = df.assign(value=pd.to_numeric(df["value"], errors="coerce"))
    out = []
    mass = df[df["metric"].astype(str) == "relevance_mass"]
    for row in mass.itertuples(index=False):
        if np.isfinite(row.value):
            out.append({"model": str(row.model), "image_id": str(row.image_id), "kind": "outside the lesion", "share": 1.0 - float(row.value)})
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
            out.append({"model": str(row.model), "image_id": str(row.image_id), "kind": "total variation (noisy)", "share": float(row.value)})
    return pd.DataFrame(out, columns=["model", "image_id", "kind", "share"])


def _section_failures(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="failures"><h2>Failure cases</h2>']
    parts.append(
        '<p class="note">Paper Figure 2: saliency can land on artifacts (hair, dark corners, rulers) or off the lesion. '
        "Below, for each model, the images whose map puts the largest share of its mass outside the lesion mask "
        "(1 &minus; relevance mass) and on an artifact mask (artifact share), and the noisiest maps (highest total "
        "variation of the map scaled to max 1; 0 = smooth), measured, not picked by eye.</p>"
    )
    if run.per_image is None or run.per_image.empty:
        parts.append('<p class="note">Not available: metrics/per_image.csv is missing.</p></section>')
        return "".join(parts)
    methods = list(dict.fromkeys(run.per_image["method"].astype(str)))
    method = "gradient" if "gradient" in methods else (methods[0] if methods else None)
    table = _failure_metric_table(run, method) if method else pd.DataFrame()
    if table.empty:
        parts.append(
            '<p class="note">per_image.csv has no relevance_mass or artifact_share_* values, so failure cases cannot be measured.</p></section>'
        )
        return "".join(parts)
    parts.append(f"<p>Method: <strong>{e(method)}</strong>.</p>")
    found = list(dict.fromkeys(table["model"]))
    order = [m for m in list(run.models) + list(run.saliency) if m in found]
    for model in list(dict.fromkeys(order + found)):
        tiles = []
        for kind, g in table[table["model"] == model].groupby("kind", sort=False):
            for row in g.sort_values("share", ascending=False).head(FAILURES_PER_MODEL).itertuples(index=False):
                pics = ""
                rgb = _input_rgb(run, row.image_id)
                if rgb is not None:
                    pics += f'<img class="tile" alt="input" src="{store.add(F.png_bytes(rgb), "fail_input")}">'
                s = run.saliency.get(model, {}).get(method)
                r = s.row(row.image_id) if s is not None else None
                if r is not None:
                    pics += f'<img class="tile" alt="map" src="{store.add(F.map_png(s.maps[r]), "fail_map")}">'
                value = _fmt(row.share, 3) if kind.startswith("total variation") else _pct(row.share)
                tiles.append(
                    f"<figure>{pics}<figcaption><strong>{value}</strong> {e(kind)}<br>{e(row.image_id)}</figcaption></figure>"
                )
        parts.append(f"<h3>{e(_model_label(run, model))}</h3><div class=\"tiles\">{''.join(tiles)}</div>")
    parts.append("</section>")
    return "".join(parts)


def _verdict_class(text: str) -> str:
    low = text.lower()
    if low.startswith(("supported", "partly supported")):
        return "verdict-supported"
    if low.startswith(("contradicted", "refuted")):
        return "verdict-contradicted"
    if low.startswith(("not supported", "mixed", "inconclusive")):
        return "verdict-not"
    if low.startswith("not comparable"):
        return "verdict-na"
    return ""


def _cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return _fmt(value, digits)
    if isinstance(value, (dict, list)):
        return e(json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, str) and _verdict_class(value):
        return f'<span class="{_verdict_class(value)}">{e(value)}</span>'
    return _fmt(value)


def _records_table(records: list[dict[str, Any]], columns: Sequence[str] | None = None, scroll: bool = True) -> str:
    cols: list[str] = list(columns or [])
    if not cols:
        for r in records:
            for k in r:
                if k not in cols:
                    cols.append(k)
    rows = [[_cell(r.get(c)) for c in cols] for r in records]
    text_cols = [i for i, c in enumerate(cols) if all(isinstance(r.get(c), str) or r.get(c) is None for r in records)]
    table = _table([e(c) for c in cols], rows, text_cols=text_cols)
    return f'<div class="scroll">{table}</div>' if scroll else table


def _json_html(obj: Any, depth: int = 0) -> str:
    """Render a JSON value whatever its shape: lists of records become tables,
    mappings become headed blocks, scalars a two-column table."""
    if isinstance(obj, list):
        if obj and all(isinstance(r, dict) for r in obj):
            return _records_table(obj)
        if obj and all(isinstance(r, str) for r in obj):
            return "<ul>" + "".join(f"<li>{e(r)}</li>" for r in obj) + "</ul>"
        return f"<p>{e(json.dumps(obj, ensure_ascii=False, default=str))}</p>"
    if isinstance(obj, dict):
        scalars = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        nested = {k: v for k, v in obj.items() if isinstance(v, (dict, list))}
        out = []
        if scalars:
            out.append(_table(["key", "value"], [[e(k), _cell(v)] for k, v in scalars.items()], text_cols=(0, 1)))
        if nested and all(isinstance(v, dict) for v in nested.values()) and all(
            not any(isinstance(x, (dict, list)) for x in v.values()) for v in nested.values()
        ):
            # {name: {field: scalar}} -> one table with a row per name
            out.append(_records_table([{"name": k, **v} for k, v in nested.items()]))
            return "".join(out)
        tag = "h4" if depth == 0 else "h5"
        for k, v in nested.items():
            out.append(f"<{tag}>{e(k)}</{tag}>{_json_html(v, depth + 1)}")
        return "".join(out)
    return f"<p>{_cell(obj)}</p>"


# summary.json keys (robsal.metrics.run.evaluate_run) shown by the plots instead of as tables
SUMMARY_PLOTTED = ("faithfulness_curves", "sanity")
SUMMARY_SHOWN = ("gate", "comparable", "explained_per_class", "verdicts", "paired", "metrics", "models", "notes", "settings", "stability", "run", "standard",
                 "n_images", "seconds")


def _summary_html(summary: Summary, alpha: float) -> str:
    """summary.json: verdicts per claim, paired differences, means with CIs, then the rest."""
    out = []
    facts = [f"{k}: {v}" for k, v in (("standard", summary.standard), ("n_images", summary.n_images)) if v is not None]
    if facts:
        out.append(f'<p class="note">{e("; ".join(facts))} (standard = the model every robust model is compared with; n = images explained).</p>')
    out.append(_gate_html_from(summary.gate))
    verdicts = [v.to_dict() for v in summary.verdicts]
    if verdicts:
        out.append("<h3>Claims of the paper: verdicts</h3>")
        out.append(
            '<p class="note">A claim is supported when the paired robust &minus; standard differences of its metrics '
            f"have the expected sign with Holm-corrected p &lt; {e(alpha)}.</p>"
        )
        cols = [c for c in ("claim", "robust", "standard", "method", "verdict", "line") if any(c in v for v in verdicts)]
        out.append(_records_table(verdicts, cols))
    else:
        out.append("<h3>Verdicts</h3>" + _json_html(verdicts))
    paired = summary.paired
    if paired:
        out.append("<h3>Paired differences (robust &minus; standard, per image)</h3>")
        out.append('<p class="note">Bold rows: Holm-corrected p below alpha.</p>')
        cols = [c for c in ("robust", "standard", "method", "metric", "n", "diff", "low", "high", "p", "p_holm") if any(c in p for p in paired)]
        if not cols:
            out.append(_records_table(paired))
        else:
            header = [e({"low": "CI low", "high": "CI high", "p": "p (Wilcoxon)", "p_holm": "p (Holm)"}.get(c, c)) for c in cols]
            rows = []
            for p in paired:
                ph = p.get("p_holm")
                sig = isinstance(ph, (int, float)) and not isinstance(ph, bool) and ph < alpha
                cells = [_cell(p.get(c)) for c in cols]
                rows.append([f"<strong>{c}</strong>" for c in cells] if sig else cells)
            text_cols = [i for i, c in enumerate(cols) if c in ("robust", "standard", "method", "metric")]
            out.append('<div class="scroll">' + _table(header, rows, text_cols=text_cols) + "</div>")
    elif paired is not None:
        out.append("<h3>Paired differences</h3>" + _json_html(paired))
    means = summary.metrics
    if means:
        cols = [c for c in ("model", "method", "metric", "n", "mean", "ci_low", "ci_high") if any(c in m for m in means)]
        out.append(
            f"<h3>Means with confidence intervals</h3><details><summary>{len(means)} rows (model &times; method &times; metric)"
            f"</summary>{_records_table(means, cols or None)}</details>"
        )
    elif means is not None:
        out.append("<h3>Metrics</h3>" + _json_html(means))
    out.append("<h3>Models compared</h3>" + _json_html({n: m.to_dict() for n, m in summary.models.items()}))
    if summary.notes:
        out.append("<h3>Notes of the metrics stage</h3>" + _json_html(summary.notes))
    if summary.stability:
        out.append("<h3>Seed stability</h3>" + _json_html(summary.stability, depth=1))
    if summary.settings is not None:
        out.append("<h3>Settings</h3>" + _json_html(summary.settings, depth=1))
    rest = {k: v for k, v in summary.to_dict().items() if k not in SUMMARY_SHOWN + SUMMARY_PLOTTED}
    if rest:
        out.append("<h3>Other fields of summary.json</h3>" + _json_html(rest, depth=1))
    return "".join(out)


def _section_metrics(run: RunContents, store: ImageStore) -> str:
    parts = ['<section id="metrics"><h2>Metrics and statistics</h2>']
    if run.summary is None and run.summary_csv is None:
        parts.append('<p class="note">No metrics yet: metrics/summary.json and summary.csv are missing.</p>')
    alpha = 0.05
    if run.config and isinstance(run.config.get("metrics"), dict):
        a = run.config["metrics"].get("alpha")
        alpha = float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else alpha
    if run.summary is not None:
        parts.append(_summary_html(run.summary, alpha))
    if run.summary_csv is not None:
        df = run.summary_csv
        records = [{str(k): _plain(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]
        parts.append(f"<details><summary>metrics/summary.csv ({len(df)} rows)</summary>{_records_table(records)}</details>")
    plots = [p for p in run.figures if _is_metric_figure(p)]
    if plots:
        parts.append("<h3>Metric plots</h3>")
        for p in plots:
            parts.append(_figure_html(p, store))
    parts.append("</section>")
    return "".join(parts)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


METRIC_FIGURE_HINTS = ("metric", "relevance", "artifact", "sanity", "deletion", "insertion", "faithful", "stabil", "complex", "sparse", "entropy", "difference", "paired")


def _is_metric_figure(path: Path) -> bool:
    return any(h in path.stem.lower() for h in METRIC_FIGURE_HINTS)


def _figure_html(path: Path, store: ImageStore) -> str:
    src = store.add(path.read_bytes(), path.stem)
    return f'<figure><img class="plot" alt="{e(path.name)}" src="{src}"><figcaption class="muted">figures/{e(path.name)}</figcaption></figure>'


def _section_figures(run: RunContents, store: ImageStore) -> str:
    others = [p for p in run.figures if not _is_metric_figure(p)]
    parts = ['<section id="figures"><h2>Other figures of the run</h2>']
    if not others:
        parts.append('<p class="note">No further figures under RUN/figures/.</p>')
    for p in others:
        parts.append(_figure_html(p, store))
    parts.append("</section>")
    return "".join(parts)


def _section_limitations(run: RunContents) -> str:
    synthetic = bool(run.config and isinstance(run.config.get("data"), dict) and run.config["data"].get("source") == "synthetic")
    items = []
    if synthetic:
        items.append(
            "This run used robsal's built-in synthetic images. They imitate dermoscopy (lesions, hair, rulers, dark "
            "corners) but are not clinical data: nothing here says how a model behaves on real patients."
        )
    items += [
        "A saliency map is not a diagnosis and not a proof of why the model decided: it shows which pixels a "
        "particular attribution method marks as influential for one model. Different methods and different "
        "training seeds give different maps (paper Appendix C.2).",
        "Adversarial training buys sharper maps at the cost of clean accuracy (see the accuracy table). Robust "
        "maps can still highlight artifacts or be noisy (paper Figure 2, and the failure cases above).",
        "The metrics compare maps with lesion and artifact masks. A mask is a proxy for what a clinician would look "
        "at; a map that stays inside the lesion can still rely on the wrong features.",
        "Confidence intervals and p-values describe the images explained here (few per class); with so few images "
        "an absence of a significant difference is not evidence of no difference.",
        "No part of this report is fit for clinical use.",
    ]
    lis = "".join(f"<li>{e(s)}</li>" for s in items)
    return f'<section id="limitations"><h2>Limitations</h2><ul>{lis}</ul></section>'


# --------------------------------------------------------------------------- entry point


def _estimated_picture_bytes(run: RunContents) -> int:
    pixels = 0
    for per_method in run.saliency.values():
        for s in per_method.values():
            n = min(len(s.image_ids), VIEWER_MAX_IMAGES)
            pixels += 3 * n * int(np.prod(s.maps.shape[1:]))  # own + shared viewer maps, grid maps
    return estimate_png_bytes(pixels) + sum(p.stat().st_size for p in run.figures)


def render_report(run: RunContents, store: ImageStore) -> str:
    """The whole HTML page for the collected run."""
    title = run.run_dir.resolve().name
    sections = [
        _section_status(run),
        _section_dataset(run, store),
        _section_config(run),
        _section_training(run, store),
        _section_viewer(run, store),
        _section_grids(run, store),
        _section_failures(run, store),
        _section_metrics(run, store),
        _section_figures(run, store),
        _section_limitations(run),
    ]
    nav = [
        ("status", "Status"), ("dataset", "Dataset"), ("config", "Config"), ("training", "Training"),
        ("viewer-section", "Viewer"), ("saliency", "Saliency grids"), ("failures", "Failure cases"),
        ("metrics", "Metrics"), ("figures", "Figures"), ("limitations", "Limitations"),
    ]
    nav_html = "".join(f'<a href="#{a}">{t}</a>' for a, t in nav)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>robsal report: {e(title)}</title><style>{_template('report.css')}</style></head><body>"
        f"<header><h1>robsal report: {e(title)}</h1><p>Robust saliency study (Margeloiu et al. 2020): standard vs "
        f"adversarially trained models, their saliency maps, and measurements of those maps. Generated {e(stamp)}.</p></header>"
        f"<nav>{nav_html}</nav><main>{''.join(sections)}</main>"
        f"<script>{_template('viewer.js')}</script></body></html>\n"
    )


@writes_run
def build_report(run_dir: str | Path, *, data: Any = None, embed: bool | None = None) -> Path:
    """Write ``RUN/report.html`` from whatever the run directory holds; return its path.

    data:  a :class:`~robsal.data.PreparedData` for example images (default: loaded
           from the run with ``robsal.data.load_run_data``, when that works).
    embed: True = pictures inside the HTML (one self-contained file); False = in
           ``RUN/report_files/``; None = embed unless the pictures would pass
           ~40 MB (:data:`~robsal.report.assets.EMBED_LIMIT_BYTES`).
    The file is written atomically; a partial run gives a partial report that says
    what is missing.
    """
    run = collect(run_dir, data=data)
    if embed is None:
        embed = _estimated_picture_bytes(run) <= EMBED_LIMIT_BYTES
    store = ImageStore(run.run_dir, embed=embed)
    page = render_report(run, store)
    out = run.run_dir / REPORT_NAME
    write_text(out, page)
    return out
