"""figures/index.json: the record (round trip, damaged files) and the report placing each figure
in the section its record names; a run without the index lists its figures in one section."""

from __future__ import annotations

import html as htmllib
import json
import re

import pytest

from robsal.errors import UserError
from robsal.report import build_report
from robsal.rundir import FIGURE_INDEX, FigureEntry, FigureIndex, RecordError, record_figure

EVIL = "<script>alert(3)</script>"


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start: page.index("</section>", start)]


# --------------------------------------------------------------------------- the record


def test_record_figure_round_trip_and_replace(tmp_path):
    (tmp_path / "figures").mkdir()
    a, b = tmp_path / "figures" / "a.png", tmp_path / "figures" / "b.png"
    record_figure(tmp_path, a, "metrics", "first caption", producer="evaluate")
    record_figure(tmp_path, b, "saliency")
    record_figure(tmp_path, a, "training", "again")  # a stage that ran again: replaces, keeps one record
    path = tmp_path / FIGURE_INDEX
    index = FigureIndex.load(path)
    assert [(f.path, f.section, f.caption, f.producer) for f in index.figures] == [
        ("figures/b.png", "saliency", None, None), ("figures/a.png", "training", "again", None)]
    before = path.read_bytes()
    FigureIndex.load(path).save(path)
    assert path.read_bytes() == before  # save(load(f)) rewrites f byte for byte
    assert json.loads(before)["figures"][1] == {"path": "figures/a.png", "section": "training", "caption": "again",
                                                "producer": None}
    made = FigureIndex()
    made.add(FigureEntry(path="figures/c.png", section="metrics"))
    assert FigureIndex.from_dict(made.to_dict(), path).figures[0].path == "figures/c.png"
    with pytest.raises(ValueError):
        record_figure(tmp_path / "figures", tmp_path / "elsewhere.png", "metrics")  # outside the run folder


@pytest.mark.parametrize("text, says", [
    ('{"figures": [', "is not valid JSON"),
    ("[]", "must hold a JSON object"),
    ("{}", "lacks the key 'figures'"),
    ('{"figures": [{"path": "figures/a.png"}]}', "lacks the key 'figures[0].section'"),
    ('{"figures": [{"path": "../../etc/x.png", "section": "metrics"}]}', "figures[0].path must be a path inside"),
    ('{"figures": [{"path": "figures/a.png", "section": 3}]}', "figures[0].section must be a string"),
])
def test_a_damaged_index_is_one_line_naming_file_and_fix(tmp_path, text, says):
    path = tmp_path / FIGURE_INDEX
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecordError) as exc:
        FigureIndex.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)) and says in msg
    assert "delete it (the report then lists every figure in one section)" in msg


def test_the_report_refuses_a_damaged_index_in_one_line(fake_run):
    (fake_run.run_dir / FIGURE_INDEX).write_text('{"figures": 1}', encoding="utf-8")
    with pytest.raises(UserError) as exc:
        build_report(fake_run.run_dir, data=fake_run.data)
    assert "\n" not in str(exc.value) and "figures/index.json: figures must be a list" in str(exc.value)


# --------------------------------------------------------------------------- placement in the report


def test_each_figure_appears_in_the_section_its_record_names(fake_run):
    run = fake_run.run_dir
    figs = run / "figures"
    record_figure(run, figs / "saliency_overview.png", "training", f"curves of {EVIL}", producer="test")
    record_figure(run, figs / "metric_relevance_mass.png", "saliency", "relevance mass")
    (figs / "unrecorded.png").write_bytes((figs / "saliency_overview.png").read_bytes())
    record_figure(run, figs / "gone.png", "metrics", "deleted after recording")  # recorded, then absent
    page = build_report(run, data=fake_run.data).read_text(encoding="utf-8")

    training = _section(page, "training")
    assert "figures/saliency_overview.png" in training and "<h3>Figures</h3>" in training
    assert f"curves of {htmllib.escape(EVIL)} (figures/saliency_overview.png)" in training  # caption, escaped
    saliency = _section(page, "saliency")
    assert "relevance mass (figures/metric_relevance_mass.png)" in saliency
    assert "saliency_overview" not in saliency
    metrics = _section(page, "metrics")
    assert "Metric plots" not in metrics and "figures/" not in metrics.split("Models compared")[1]
    others = _section(page, "figures")
    assert "<h2>Other figures of the run</h2>" in others
    assert "figures/unrecorded.png" in others and "saliency_overview" not in others
    assert "Recorded in figures/index.json but absent: figures/gone.png." in others
    assert "no figures/index.json" not in page
    # every picture shown once: the two recorded ones and the unrecorded one
    assert page.count('<img class="plot"') == 3 + 1  # + the training curves
    assert EVIL not in page and len(re.findall(r"<script\b", page, re.I)) == 2


def test_figures_of_the_metrics_stage_land_under_metric_plots(fake_run):
    run = fake_run.run_dir
    record_figure(run, run / "figures" / "saliency_overview.png", "metrics", "an overview")
    page = build_report(run, data=fake_run.data).read_text(encoding="utf-8")
    metrics = _section(page, "metrics")
    assert "<h3>Metric plots</h3>" in metrics and "an overview (figures/saliency_overview.png)" in metrics
    # the figure the index does not name is listed with the other figures
    assert "figures/metric_relevance_mass.png" in _section(page, "figures")


def test_a_run_without_index_lists_all_its_figures_in_one_section(fake_run):
    assert not (fake_run.run_dir / FIGURE_INDEX).exists()  # as a run of the previous release
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    section = _section(page, "figures")
    assert "<h2>Figures of the run</h2>" in section
    assert "has no figures/index.json (it was made by an older robsal)" in section
    assert section.index("figures/metric_relevance_mass.png") < section.index("figures/saliency_overview.png")
    for sid in ("training", "saliency", "metrics"):
        assert "figures/metric_relevance_mass.png" not in _section(page, sid)  # no placement by file name


def test_the_report_links_nothing_outside_itself(fake_run):
    record_figure(fake_run.run_dir, fake_run.run_dir / "figures" / "saliency_overview.png", "figures",
                  'see https://example.org/"x"')
    page = build_report(fake_run.run_dir, data=fake_run.data, embed=True).read_text(encoding="utf-8")
    links = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page, re.I)
    assert links and not [u for u in links if not (u.startswith("data:image/png;base64,") or u.startswith("#"))]
    assert not re.search(r"""\b(?:src|href)\s*=\s*['"]?\s*(?:https?:)?//""", page, re.I)
    assert "see https://example.org/&quot;x&quot;" in page  # a caption's text, escaped, never a link
