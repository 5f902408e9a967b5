"""The competence gate: per-class recall and explained images decide whether models are compared."""

from __future__ import annotations

import json

import pytest

from robsal.config import load_config
from robsal.errors import ConfigError
from robsal.metrics import gate
from robsal.metrics.run import evaluate_run

CLASSES = ["mel", "nv", "bkl"]


def _m(mel, nv, bkl, ba=None):
    return {"per_class_accuracy": {"mel": mel, "nv": nv, "bkl": bkl},
            "balanced_accuracy": ba if ba is not None else (mel + nv + bkl) / 3}


def test_zero_recall_is_not_comparable_with_the_reason():
    g = gate.check({"standard": _m(0.8, 0.9, 0.7), "robust_eps4": _m(0.0, 0.95, 0.9)}, CLASSES,
                   {"mel": 10, "nv": 10, "bkl": 10}, min_recall=0.5, min_explained_per_class=10)
    assert not g.comparable
    assert g.reasons == ["robust_eps4 recalls mel at 0.00 (< 0.50)"]
    assert g.recall["robust_eps4"]["mel"] == 0.0 and g.balanced_accuracy["standard"] == pytest.approx(0.8)


def test_threshold_is_inclusive_and_every_shortfall_is_named():
    ok = gate.check({"a": _m(0.5, 0.5, 0.5), "b": _m(0.6, 0.7, 0.8)}, CLASSES, {"mel": 3, "nv": 3, "bkl": 3},
                    min_recall=0.5, min_explained_per_class=3)
    assert ok.comparable and ok.reasons == [] and ok.reason == ""
    bad = gate.check({"a": _m(0.49, 0.5, 0.2), "b": _m(0.6, 0.7, 0.8)}, CLASSES, {"mel": 1, "nv": 0, "bkl": 3},
                     min_recall=0.5, min_explained_per_class=3)
    assert bad.reasons == [
        "a recalls mel at 0.49 (< 0.50)",
        "a recalls bkl at 0.20 (< 0.50)",
        "mel has 1 explained image (< 3)",
        "nv has 0 explained images (< 3)",
    ]


def test_unknown_recall_fails_and_no_selection_checks_recall_only():
    g = gate.check({"a": {"clean_accuracy": 0.9}, "b": _m(0.9, 0.9, 0.9)}, CLASSES, None)
    assert not g.comparable and g.reasons == ["a has no test recall for mel, nv, bkl (its competence is unknown)"]
    assert gate.check({"b": _m(0.9, 0.9, 0.9)}, CLASSES, None).comparable


def test_gate_verdicts_withholds_only_failed_pairs():
    verdicts = [
        {"claim": "sharper", "robust": "r1", "standard": "s", "method": "gradient", "verdict": "supported", "line": "x"},
        {"claim": "sharper", "robust": "r2", "standard": "s", "method": "gradient", "verdict": "not supported", "line": "y"},
    ]
    gates = {("r1", "s"): gate.Gate(["r1", "s"], ["r1 recalls mel at 0.00 (< 0.50)"]),
             ("r2", "s"): gate.Gate(["r2", "s"])}
    out = gate.gate_verdicts(verdicts, gates)
    assert out[0]["verdict"] == "not comparable" and out[0]["verdict_if_comparable"] == "supported"
    assert out[0]["line"] == ("robust maps are sharper (r1 vs s, gradient): not comparable: "
                              "r1 recalls mel at 0.00 (< 0.50)")
    assert out[1] == verdicts[1]
    assert verdicts[0]["verdict"] == "supported"  # the input is not modified


def test_config_values_are_validated():
    assert load_config("quick").min_explained() == 10  # default: saliency.n_per_class
    assert load_config("quick", ["metrics.min_explained_per_class=4"]).min_explained() == 4
    with pytest.raises(ConfigError, match="metrics.min_explained_per_class: asks for 11"):
        load_config("quick", ["metrics.min_explained_per_class=11"])
    with pytest.raises(ConfigError, match="metrics.min_recall"):
        load_config("quick", ["metrics.min_recall=1.5"])


def test_evaluate_run_zero_recall_gives_not_comparable_in_summary_and_report(make_run):
    from robsal.report import build_report

    recall = {"robust_eps4": {"mel": 0.0, "nv": 0.95, "bkl": 0.9}}
    run, data, explain = make_run(models=(("standard", 0.0, 0), ("robust_eps4", 4.0, 0)), methods=("gradient",),
                                  recall=recall)
    evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert summary["comparable"] is False
    assert summary["gate"]["reasons"] == ["robust_eps4 recalls mel at 0.00 (< 0.50)"]
    assert summary["gate"]["pairs"] == [{"robust": "robust_eps4", "standard": "standard", "comparable": False,
                                         "reasons": ["robust_eps4 recalls mel at 0.00 (< 0.50)"]}]
    assert summary["explained_per_class"] == {"mel": 3, "nv": 3, "bkl": 3}
    assert summary["verdicts"] and {v["verdict"] for v in summary["verdicts"]} == {"not comparable"}
    assert all(v["line"].endswith("not comparable: robust_eps4 recalls mel at 0.00 (< 0.50)") for v in summary["verdicts"])
    assert all(v["verdict_if_comparable"] != "not comparable" for v in summary["verdicts"])
    assert summary["paired"]  # the differences are still described
    html = build_report(run).read_text(encoding="utf-8")
    glance = html[html.index("At a glance"): html.index("</ul>", html.index("At a glance"))]
    assert "Not comparable" in glance and "robust_eps4 recalls mel at 0.00 (&lt; 0.50)" in glance
    assert "recall mel 0.00, nv 0.95, bkl 0.90" in glance  # per-class recall beside the verdicts
    assert "not supported" not in glance.lower()
    from robsal.experiments.run import summary_lines

    lines = summary_lines(run)
    assert "not comparable: robust_eps4 recalls mel at 0.00 (< 0.50)" in lines


def test_evaluate_run_competent_models_get_verdicts(make_run):
    run, data, explain = make_run(models=(("standard", 0.0, 0), ("robust_eps4", 4.0, 0)), methods=("gradient",))
    evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert summary["comparable"] is True and summary["gate"]["reasons"] == []
    assert "not comparable" not in {v["verdict"] for v in summary["verdicts"]}
    assert summary["gate"]["recall"]["standard"] == {"mel": 0.9, "nv": 0.9, "bkl": 0.9}


def test_too_few_explained_images_is_not_comparable(make_run):
    # 4 images: mel, nv, bkl, mel -> nv and bkl have 1 explained image each, the tiny preset asks for 2
    run, data, explain = make_run(models=(("standard", 0.0, 0), ("robust_eps4", 4.0, 0)), methods=("gradient",),
                                  n_images=4)
    evaluate_run(run, data=data, device="cpu", progress=False, explain_fn=explain)
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert summary["gate"]["reasons"] == ["nv has 1 explained image (< 2)", "bkl has 1 explained image (< 2)"]
    assert {v["verdict"] for v in summary["verdicts"]} == {"not comparable"}
