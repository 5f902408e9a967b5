"""``robsal control`` end to end on tiny data: folders, tables, verdicts, report, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.experiments.conftest import SWEEP_OVERRIDES

CONTROL_OVERRIDES = [*SWEEP_OVERRIDES, "control.rates=[0, 0.9]", "control.methods=[gradient, gradcam]",
                     "control.explain_per_class=6", "control.examples=2"]


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    from robsal.config import load_config
    from robsal.experiments.control import run_control

    cfg = load_config("tiny", CONTROL_OVERRIDES)
    out = tmp_path_factory.mktemp("control") / "run"
    return cfg, out, run_control(cfg, out, progress=False)


@pytest.mark.slow
def test_control_end_to_end(control_run):
    cfg, out, result = control_run
    assert result.rates == [0.0, 0.9]
    for folder, rate in (("p0", 0.0), ("p0.9", 0.9)):
        rdir = out / folder
        for f in ("config.yaml", "splits.csv", "data/synth.json", "models/standard/model.json",
                  "models/robust_eps4/model.json", "control/per_image.csv", "control/shares.csv",
                  "control/examples.npz", "control/rate.json"):
            assert (rdir / f).exists(), f
        assert "control" in json.loads((rdir / "stages.json").read_text())
        synth = json.loads((rdir / "data" / "synth.json").read_text())["settings"]
        assert (synth["planted_artifact"], synth["planted_class"], synth["planted_rate"]) == ("ruler", "mel", rate)
        per_image = pd.read_csv(rdir / "control" / "per_image.csv")
        n_test = len(pd.read_csv(rdir / "splits.csv").query("split == 'test'"))
        assert len(per_image) == 2 * n_test and set(per_image["flip"]) <= {0, 1}
        # flip = planted class with the ruler, another class without it
        want = (per_image["pred_with"] == "mel") & (per_image["pred_without"] != "mel")
        assert (per_image["flip"] == want.astype(int)).all()
        np.testing.assert_allclose(per_image["prob_drop"], per_image["p_with"] - per_image["p_without"])
        carriers = per_image[per_image["carried"]]
        assert (carriers["label"] == "mel").all()  # the ruler only ever comes with mel
        if rate == 0.0:
            assert len(carriers) == 0
        else:
            assert len(carriers) >= 0.5 * (per_image["label"] == "mel").sum()  # rate 0.9: most mel images
        shares = pd.read_csv(rdir / "control" / "shares.csv")
        assert set(shares["method"]) == {"gradient", "gradcam"}
        ok = shares.dropna(subset=["share"])
        assert ((ok["share"] >= 0) & (ok["share"] <= 1)).all() and (ok["area"] > 0).all()
        np.testing.assert_allclose(ok["lift"], ok["share"] / ok["area"])
    summary = json.loads((out / "control" / "summary.json").read_text())
    det = [v for v in summary["verdicts"] if v["kind"] == "detection"]
    assert {(v["model"], v["method"]) for v in det} == {(m, me) for m in ("standard", "robust_eps4")
                                                         for me in ("gradient", "gradcam")}
    verdicts = {"detects the shortcut", "does not detect the shortcut", "no shortcut to detect", "not comparable"}
    assert {v["verdict"] for v in det} <= verdicts
    kinds = {(v["kind"], v["rate"]) for v in summary["verdicts"] if v["kind"] != "detection"}
    assert kinds == {("reliance", 0.0), ("reliance", 0.9), ("visibility", 0.0), ("visibility", 0.9)}
    reliance = pd.read_csv(out / "control" / "reliance.csv")
    assert len(reliance) == 2 * 2 * 3 * 2  # rates x models x groups x metrics
    assert ((reliance["low"] <= reliance["mean"] + 1e-12) & (reliance["mean"] <= reliance["high"] + 1e-12)).all()
    assert summary["lines"] and (out / "control" / "verdicts.csv").exists()


@pytest.mark.slow
def test_control_report(control_run):
    from robsal.report.control import control_section, write_page

    cfg, out, _ = control_run
    page = (out / "control" / "report.html").read_text()
    assert "Can these maps see a shortcut?" in page and page.count("data:image/png;base64,") == 2
    # values are escaped
    path = out / "control" / "summary.json"
    doc = json.loads(path.read_text())
    doc["lines"].append("<script>alert(1)</script>")
    path.write_text(json.dumps(doc))
    html = control_section(out)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert control_section(out / "p0") is None  # a rate's folder holds no control summary
    assert write_page(out / "p0") is None


@pytest.mark.slow
def test_control_resumes_and_refuses_another_config(control_run, capfd):
    from robsal.config import load_config
    from robsal.errors import ConfigError
    from robsal.experiments.control import run_control

    cfg, out, _ = control_run
    stamp = (out / "p0.9" / "models" / "standard" / "model.safetensors").stat().st_mtime_ns
    run_control(cfg, out, progress=False)
    err = capfd.readouterr().err
    assert err.count("done earlier, skipped") == 2
    assert (out / "p0.9" / "models" / "standard" / "model.safetensors").stat().st_mtime_ns == stamp
    other = load_config("tiny", [*CONTROL_OVERRIDES, "control.rates=[0, 0.5]"])
    with pytest.raises(ConfigError, match="another config"):
        run_control(other, out, progress=False)


def test_control_refuses_bad_configs(tmp_path):
    from robsal.config import load_config
    from robsal.errors import ConfigError
    from robsal.experiments.control import run_control

    for extra, msg in ((["control.rates=[0.5]"], "at least two"), (["control.planted_class=scc"], "planted_class"),
                       (["data.source=folder", "data.root=/nonexistent"], "built-in generator"),
                       (["control.methods=[nope]"], "unknown method"),
                       (["data.synth.spurious_ruler_mel=0.5"], "spurious_ruler_mel")):
        with pytest.raises(ConfigError, match=msg):
            run_control(load_config("tiny", [*CONTROL_OVERRIDES, *extra]), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_rates_fingerprint_does_not_depend_on_the_other_rates(tmp_path):
    """Adding or dropping a rate keeps the finished rates (each rate's config holds only its own)."""
    from robsal.config import load_config
    from robsal.experiments.control import rate_config
    from robsal.rundir import fingerprint

    three = load_config("tiny", ["control.rates=[0,0.5,0.9]"])
    two = load_config("tiny", ["control.rates=[0,0.9]"])
    fp = [fingerprint(rate_config(c, 0.9, tmp_path), "control_rate") for c in (three, two)]
    assert fp[0] == fp[1]
    assert fingerprint(rate_config(three, 0.5, tmp_path), "control_rate") != fp[0]
