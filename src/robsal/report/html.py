"""``RUN/report.html``: one browsable page for a run (issue "The main job and its report").

Sections: run status (what is done, what is missing), dataset, exact config,
training curves and accuracy, an interactive viewer (pick an image and a method, slide
between models), saliency grids (paper Fig. 1/5 style: standard next to robust),
failure cases (paper Fig. 2, with the share measured), metrics and statistics, the
stages' figures (each in the section ``figures/index.json`` names), the positive
control when the folder holds one, limitations.

The page is built from Jinja2 templates (``templates/<section>.html.j2``, the page
``base.html.j2``, shared macros ``macros.html.j2``); the functions of
:mod:`~robsal.report.sections_run`, :mod:`~robsal.report.sections_maps` and
:mod:`~robsal.report.sections_results` give each template plain data. Every value is
escaped as :func:`html.escape` does (autoescape, with :func:`_escape` as the finalizer);
the viewer's data is JSON with ``<``, ``>``, ``&`` and ``'`` escaped as ``\\u003c``
etc. (``tojson``) and is written into the page with ``textContent`` only. A
Content-Security-Policy forbids every network load, so the page reads offline.
"""

from __future__ import annotations

import html
import time
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from robsal.io import write_text
from robsal.report import sections_maps, sections_results, sections_run
from robsal.report.assets import EMBED_LIMIT_BYTES, ImageStore, estimate_png_bytes
from robsal.report.collect import RunContents, collect
from robsal.report.context import Page
from robsal.report.control import control_section
from robsal.rundir import writes_run

REPORT_NAME = "report.html"
TEMPLATES = Path(__file__).parent / "templates"
EXAMPLES_PER_CLASS = 4
GRID_PER_CLASS = 2  # images per class in the static saliency grids
FAILURES_PER_MODEL = 3
VIEWER_MAX_IMAGES = 60

NAV = (
    ("status", "Status"), ("dataset", "Dataset"), ("config", "Config"), ("training", "Training"),
    ("viewer-section", "Viewer"), ("saliency", "Saliency grids"), ("failures", "Failure cases"),
    ("metrics", "Metrics"), ("figures", "Figures"), ("control", "Control"), ("limitations", "Limitations"),
)


def _escape(value: Any) -> Any:
    """Jinja2 finalizer: escape a value as :func:`html.escape` (quotes included) does; markup passes."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@cache
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: templates/ folder, autoescape, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, finalize=_escape,
    )
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "allow_nan": False}  # keep key order
    return env


def _asset(name: str) -> Markup:
    """The text of a stylesheet or script of templates/, to inline (no network)."""
    return Markup((TEMPLATES / name).read_text(encoding="utf-8"))


def render_sections(page: Page) -> list[tuple[str, Markup]]:
    """(section id, HTML) of every section the run has, in page order."""
    run = page.run
    env = environment()
    figs = sections_results.place_figures(page)
    by_section = figs["by_section"]

    def render(name: str, **context: Any) -> Markup:
        return Markup(env.get_template(f"{name}.html.j2").render(**context))

    out = [
        ("status", render("status", **sections_run.status(page))),
        ("dataset", render("dataset", **sections_run.dataset(page), figures=by_section["dataset"])),
        ("config", render("config", **sections_run.config(page))),
        ("training", render("training", **sections_run.training(page), figures=by_section["training"])),
        ("viewer-section", render("viewer", **sections_maps.viewer(page))),
        ("saliency", render("saliency", **sections_maps.grids(page), figures=by_section["saliency"])),
        ("failures", render("failures", **sections_maps.failures(page), figures=by_section["failures"])),
        ("metrics", render("metrics", **sections_results.metrics(page, by_section["metrics"]))),
        ("figures", render("figures", figures=by_section["figures"], indexed=figs["indexed"], absent=figs["absent"])),
    ]
    control = control_section(run.run_dir)  # "Can these maps see a shortcut?" (robsal control)
    if control is not None:
        out.append(("control", Markup(control)))
    out.append(("limitations", render("limitations", items=sections_results.limitations(run))))
    return out


def render_report(run: RunContents, store: ImageStore) -> str:
    """The whole HTML page for the collected run."""
    page = Page(run, store, EXAMPLES_PER_CLASS, GRID_PER_CLASS, FAILURES_PER_MODEL, VIEWER_MAX_IMAGES)
    sections = render_sections(page)
    shown = {sid for sid, _ in sections}
    return environment().get_template("base.html.j2").render(
        title=run.run_dir.resolve().name, stamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        nav=[(a, t) for a, t in NAV if a in shown], sections=[s for _, s in sections],
        css=_asset("report.css"), js=_asset("viewer.js"),
    )


def _estimated_picture_bytes(run: RunContents) -> int:
    pixels = 0
    for per_method in run.saliency.values():
        for s in per_method.values():
            n = min(len(s.image_ids), VIEWER_MAX_IMAGES)
            pixels += 3 * n * int(np.prod(s.maps.shape[1:]))  # own + shared viewer maps, grid maps
    return estimate_png_bytes(pixels) + sum(p.stat().st_size for p in run.figures)


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
