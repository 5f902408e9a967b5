"""The report section of the positive control, from a hand-written summary (no training)."""

from __future__ import annotations

import json
import re

import numpy as np

from robsal.report.control import control_section, write_page


def _write_control(root):
    ctl = root / "control"
    ctl.mkdir(parents=True)
    test = {"name": "artifact share p=0.9 - p=0", "kind": "diff", "n": 6, "diff": 0.2, "low": 0.1, "high": 0.3,
            "p": 0.01, "p_holm": 0.02, "effect": 0.2, "sign": 1, "supports": True, "contradicts": False}
    summary = {
        "artifact": "ruler", "planted_class": "<mel>", "rates": [0.0, 0.9], "models": ["standard", "robust_eps4"],
        "methods": ["gradient"], "alpha": 0.05, "gates": {"0": {"comparable": True, "reasons": []},
                                                          "0.9": {"comparable": False, "reasons": ["standard recalls nv at 0.10 (< 0.50)"]}},
        "reliance": [{"rate": 0.9, "model": "standard", "group": "planted", "metric": "flip", "n": 4, "mean": 0.75,
                      "low": 0.5, "high": 1.0}],
        "detection": [{"rate": 0.9, "model": "standard", "method": "gradient", "n": 6, "share": 0.4, "share_low": 0.3,
                       "share_high": 0.5, "area": 0.1, "lift": 4.0, "lift_low": 3.0, "lift_high": 5.0,
                       "flip_auroc": None, "flip_auroc_low": None, "flip_auroc_high": None}],
        "verdicts": [{"kind": "detection", "model": "standard", "method": "gradient", "verdict": "detects the shortcut",
                      "reason": "", "model_auroc": 0.9, "model_auroc_low": 0.8, "model_auroc_high": 1.0, "tests": [test]},
                     {"kind": "reliance", "line": "the robust model relies less <b>x</b>"}],
        "lines": ["planted: ruler with <mel>", "<script>alert(1)</script>"],
    }
    (ctl / "summary.json").write_text(json.dumps(summary))
    ex = root / "p0.9" / "control"
    ex.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"image_ids": np.array(["ISIC_1"]), "with": rng.integers(0, 255, (1, 3, 16, 16), dtype=np.uint8),
              "without": rng.integers(0, 255, (1, 3, 16, 16), dtype=np.uint8),
              "mask": np.pad(np.ones((1, 3, 16), np.uint8), ((0, 0), (0, 13), (0, 0))), "carried": np.array([True]),
              "models": np.array(["standard"]), "methods": np.array(["gradient"]), "flip__standard": np.array([1])}
    arrays["with__standard__gradient"] = rng.random((1, 16, 16)).astype(np.float32)
    arrays["without__standard__gradient"] = rng.random((1, 16, 16)).astype(np.float32)
    np.savez(ex / "examples.npz", **arrays)


def test_section_is_escaped_and_self_contained(tmp_path):
    _write_control(tmp_path)
    html = control_section(tmp_path)
    assert html.startswith("<section") or "<section" in html.split("\n", 3)[-1]
    assert "Can these maps see a shortcut?" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;mel&gt;" in html and "<mel>" not in html and "<b>x</b>" not in html
    assert html.count("data:image/png;base64,") == 1  # one example figure, embedded
    assert "75% [50%, 100%]" in html and "detects the shortcut" in html and "0.90 [0.80, 1.00]" in html
    assert "standard recalls nv at 0.10" in html  # the failed gate is named
    page = write_page(tmp_path)
    assert page == tmp_path / "control" / "report.html" and "<!DOCTYPE html>" in page.read_text()


def test_no_control_no_section(tmp_path):
    assert control_section(tmp_path) is None
    assert write_page(tmp_path) is None


def test_the_run_report_includes_the_control_section(fake_run):
    from robsal.report import build_report

    _write_control(fake_run.run_dir)
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    section = page[page.index('<section class="robsal-control" id="control">'): page.index('<section id="limitations">')]
    assert "Can these maps see a shortcut?" in section and '<a href="#control">Control</a>' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "75% [50%, 100%]" in section
    assert len(re.findall(r"<script\b", page, re.I)) == 2  # the report's own two, none from the summary


def test_robsal_report_opens_a_control_folder(tmp_path, capsys):
    from robsal.cli import main
    from robsal.config import load_config
    from robsal.rundir import init_run, is_run_dir

    out = init_run(load_config("tiny", ["device=cpu"]), tmp_path / "control_out")  # as `robsal control` does
    _write_control(out)
    assert is_run_dir(out)
    assert main(["report", "--run", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Can these maps see a shortcut?" in page and "no model has been trained yet" in page
    assert write_page(out) == out / "control" / "report.html"  # the control's own page stays


def test_a_run_without_control_has_no_control_section(fake_run):
    from robsal.report import build_report

    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert 'id="control"' not in page and "#control" not in page
