"""The HTML report: numbers shown, escaping, partial runs, embedded vs report_files/, CLI."""

from __future__ import annotations

import base64
import html as htmllib
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from robsal.errors import UserError
from robsal.report import build_report
from robsal.report import figures as F

# the fake run of tests/report/conftest.py (same values as FakeRun's constants)
EVIL_CLASS = "<script>alert(1)</script>"
EVIL_ID = 'x"><img src=q onerror=alert(2)>'
METHODS = ("gradient", "gradcam")
MODELS = (("standard", 0.0), ("robust_eps4", 4.0))
SIZE = 24


def _decode_png(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def _viewer_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', page, re.S)
    assert m, "viewer data missing"
    return json.loads(m.group(1))


# --------------------------------------------------------------------------- normalisation (Appendix B)


def test_normalise_map_caps_at_99th_percentile_and_rescales():
    m = np.arange(101, dtype=np.float32).reshape(1, 101)  # 0..100: 99th percentile = 99.0
    out = F.normalise_map(m)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[0, 50], 50 / 99, rtol=1e-6)
    assert out[0, 99] == 1.0 and out[0, 100] == 1.0  # the extreme value is capped
    # shared range: the same map on a scale twice as wide is half as bright
    np.testing.assert_allclose(F.normalise_map(m, value_range=(0.0, 198.0))[0, 50], 50 / 198, rtol=1e-6)
    assert not F.normalise_map(np.zeros((4, 4))).any()  # all-zero map -> zeros, no NaN
    # a nearly constant map is uniformly salient: float noise is not stretched into structure
    flat = 3.0 + 1e-7 * np.random.default_rng(0).random((8, 8))
    assert F.normalise_map(flat).min() > 0.99
    with pytest.raises(ValueError):
        F.normalise_map(np.array([[0.0, np.nan]]), value_range=(0.0, np.nan))


def test_map_range_of_a_stack_pools_all_maps():
    a = np.zeros((10, 10))
    b = np.full((10, 10), 5.0)
    low, cap = F.map_range(np.stack([a, b]))
    assert low == 0.0 and cap == 5.0
    assert F.normalise_map(a, value_range=(low, cap)).max() == 0.0
    assert F.normalise_map(b, value_range=(low, cap)).min() == 1.0


def test_outline_is_the_inner_boundary_of_the_mask():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:7, 3:8] = 1  # a 5x5 square
    edge = F.outline(mask)
    assert edge.sum() == 16  # 4 * (5 - 1)
    assert not edge[4, 5] and edge[2, 3] and edge[6, 7]
    rgb = F.draw_outline(np.zeros((10, 10, 3), np.uint8), mask)
    assert (rgb[edge] == F.OUTLINE_RGB).all() and not rgb[~edge].any()


def test_colorize_is_the_colormap_and_png_round_trips():
    ramp = np.linspace(0, 1, 16).reshape(4, 4)
    rgb = F.colorize(ramp)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].sum() < rgb[-1, -1].sum()  # inferno: dark at 0, light at 1
    back = np.asarray(Image.open(io.BytesIO(F.png_bytes(rgb))))
    np.testing.assert_array_equal(back, rgb)


# --------------------------------------------------------------------------- full report


@pytest.fixture
def built(fake_run):
    assert (fake_run.EVIL_CLASS, fake_run.EVIL_ID, fake_run.METHODS, fake_run.MODELS, fake_run.SIZE) == (
        EVIL_CLASS, EVIL_ID, METHODS, MODELS, SIZE)
    path = build_report(fake_run.run_dir, data=fake_run.data, embed=True)
    return fake_run, path.read_text(encoding="utf-8")


def test_report_shows_the_runs_numbers(built):
    fake, page = built
    assert page.startswith("<!DOCTYPE html>")
    # dataset: counts per class and split (4 train, 1 val, 2 test per class, 21 in all)
    assert "<strong>12</strong>" in page and "<strong>21</strong>" in page
    assert "21 distinct lesions" in page
    dataset = page[page.index('<section id="dataset">'): page.index('<section id="config">')]
    assert dataset.count('<figure><img class="tile"') == 3 * 4  # four examples per class
    assert dataset.index("img_0_test_0") < dataset.index("img_0_train_0")  # test images first
    assert "hair" in dataset and "no artifacts" not in dataset  # every fake image has a hair
    # config, verbatim (escaped)
    assert htmllib.escape((fake.run_dir / "config.yaml").read_text(), quote=True) in page
    # accuracies from model.json, as percentages
    assert "75.0%" in page and "65.0%" in page  # clean accuracy of standard / robust
    assert "37.5%" in page  # robust_eps4's robust accuracy at eps 4
    assert "robust_eps4 (eps=4)" in page and "standard (standard)" in page
    # the radius the robust model was trained against, in pixel space, and the scaling rule
    assert f", trained against an L2 radius of {4 * SIZE / 224:.2f} at {SIZE} px (side rule): clean" in page
    assert "standard (standard)</strong>: clean" in page  # no radius for the standard model
    # every method has a grid, standard next to robust
    for method in METHODS:
        assert f"<h3>{method}</h3>" in page
    # verdicts, paired differences with p-values, plots, limitations
    assert "verdict-supported" in page and "0.0123" in page and "0.0246" in page
    assert "figures/metric_relevance_mass.png" in page and "figures/saliency_overview.png" in page
    assert "not clinical data" in page and "not a diagnosis" in page
    assert "Not in this report" not in page  # everything is there


def test_failure_cases_are_the_measured_worst_images(built):
    fake, page = built
    section = page[page.index('<section id="failures">'): page.index('<section id="metrics">')]
    pi = fake.per_image[fake.per_image["method"] == "gradient"]
    for model, _ in MODELS:
        sub = pi[(pi["model"] == model) & (pi["metric"] == "relevance_mass")]
        worst = sub.sort_values("value").iloc[0]
        assert f"{100 * (1 - worst['value']):.1f}%</strong> outside the lesion" in section
        hair = pi[(pi["model"] == model) & (pi["metric"] == "artifact_share_hair")]
        assert f"{100 * hair['value'].max():.1f}%</strong> on hair" in section
        tv = pi[(pi["model"] == model) & (pi["metric"] == "total_variation")]["value"]
        assert f"<strong>{tv.max():.3f}</strong> total variation (noisy)" in section
    # each model in the run's order, its worst outside-lesion case first
    assert section.index("standard (standard)") < section.index("robust_eps4 (eps=4)")
    # the standard model's maps sit on the hair: its worst artifact share is large
    std_hair = pi[(pi["model"] == "standard") & (pi["metric"] == "artifact_share_hair")]["value"].max()
    assert std_hair > 0.5


def test_viewer_maps_are_the_npz_maps_on_the_paper_scale(built):
    fake, page = built
    data = _viewer_data(page)
    assert data["models"] == [m for m, _ in MODELS]
    assert data["methods"] == list(METHODS)
    assert [img["id"] for img in data["images"]] == fake.test_ids
    k = 1
    img = data["images"][k]
    for model, _ in MODELS:
        raw = fake.maps[(model, "gradient")][k]
        own = _decode_png(img["maps"]["gradient"][model]["own"])
        np.testing.assert_array_equal(own, F.colorize(F.normalise_map(raw)))
    # shared scale: the robust maps are 10x smaller, so on the shared scale they are darker
    stack = np.stack([fake.maps[(m, "gradient")][k] for m, _ in MODELS])
    shared_range = F.map_range(stack)
    rob = _decode_png(img["maps"]["gradient"]["robust_eps4"]["shared"])
    np.testing.assert_array_equal(rob, F.colorize(F.normalise_map(stack[1], value_range=shared_range)))
    own_rob = _decode_png(img["maps"]["gradient"]["robust_eps4"]["own"])
    assert rob.astype(int).sum() < own_rob.astype(int).sum()
    # the input image is the run's image, enlarged 5x (24 px -> 120 px, nearest), with the lesion outline
    row = fake.data.rows_of([fake.test_ids[k]])[0]
    shown = _decode_png(img["input"])
    assert shown.shape == (5 * SIZE, 5 * SIZE, 3)
    big = np.kron(F.chw_to_rgb(fake.data.images[row]), np.ones((5, 5, 1), np.uint8))  # 5x5 blocks
    edge = F.outline(np.kron(fake.data.masks[row], np.ones((5, 5), np.uint8)))
    assert 0 < edge.sum() < edge.size // 4
    np.testing.assert_array_equal(shown[~edge], big[~edge])
    assert (shown[edge] == F.OUTLINE_RGB).all()


def test_data_strings_are_escaped(built):
    fake, page = built
    assert EVIL_CLASS not in page and EVIL_ID not in page
    assert htmllib.escape(EVIL_CLASS) in page and htmllib.escape(EVIL_ID, quote=True) in page
    assert "<b>bold</b>" not in page  # a note of summary.json
    # only the two script elements of the report itself
    assert len(re.findall(r"<script\b", page, re.I)) == 2
    # the viewer JSON carries the class name, with < and > as \u escapes
    data = _viewer_data(page)
    assert any(EVIL_CLASS in img["label"] for img in data["images"])
    assert "\\u003cscript\\u003e" in page


def test_report_is_self_contained_and_offline(built):
    _, page = built
    assert "default-src 'none'" in page  # CSP: no network loads at all
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


def test_report_files_mode_writes_pictures_beside_the_report(fake_run):
    path = build_report(fake_run.run_dir, data=fake_run.data, embed=False)
    page = path.read_text(encoding="utf-8")
    assert all(s.startswith("report_files/") for s in re.findall(r'src="([^"]*)"', page))
    srcs = re.findall(r'"(report_files/[^"]+)"', page)  # every reference once: <img src> and viewer JSON
    assert len(srcs) > 20
    for s in srcs:
        assert (fake_run.run_dir / s).is_file(), s
    files = sorted((fake_run.run_dir / "report_files").iterdir())
    # identical pictures (a map in the grid and in the viewer) are written once
    assert len(files) == len(set(srcs)) < len(srcs)
    # a rebuild replaces, not accumulates, the pictures
    build_report(fake_run.run_dir, data=fake_run.data, embed=False)
    assert len(list((fake_run.run_dir / "report_files").iterdir())) == len(files)


# --------------------------------------------------------------------------- partial and broken runs


def test_training_only_run_says_what_is_missing(fake_run_factory):
    fake = fake_run_factory(parts=("models",))
    page = build_report(fake.run_dir, data=fake.data).read_text(encoding="utf-8")
    assert "75.0%" in page  # what exists is shown
    assert "Not in this report" in page
    assert "saliency stage has not run" in page
    assert "metrics/per_image.csv is missing" in page
    assert "No saliency maps yet" in page and 'id="viewer-data"' not in page


def test_report_without_images_or_data_loader(fake_run_factory, monkeypatch):
    fake = fake_run_factory()
    import robsal.data as data_pkg

    def broken(run_dir):
        from robsal.errors import DataError

        raise DataError(f"{run_dir}/data is missing")

    monkeypatch.setattr(data_pkg, "load_run_data", broken, raising=False)
    page = build_report(fake.run_dir).read_text(encoding="utf-8")
    assert "example images: the run&#x27;s images could not be loaded" in page
    assert "Example images are not available" in page
    data = _viewer_data(page)
    assert all(img["input"] is None for img in data["images"])  # maps still browsable


def test_empty_directory_gives_a_report_listing_everything_missing(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    page = build_report(run).read_text(encoding="utf-8")
    for phrase in ("config.yaml is missing", "splits.csv is missing", "no model has been trained",
                   "saliency stage has not run", "no statistics yet"):
        assert phrase in page


def test_missing_run_directory_and_corrupt_files_are_user_errors(fake_run_factory, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope")
    fake = fake_run_factory()
    bad = fake.run_dir / "models" / "standard" / "model.json"
    bad.write_text('{"metrics": ', encoding="utf-8")
    with pytest.raises(UserError, match=r"models/standard/model\.json is not valid JSON"):
        build_report(fake.run_dir, data=fake.data)
    bad.unlink()
    (fake.run_dir / "metrics" / "per_image.csv").write_text("image_id,model\nx,y\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"per_image\.csv lacks the column\(s\) method, metric, value"):
        build_report(fake.run_dir, data=fake.data)


def test_automatic_embedding_switches_to_report_files_for_big_runs(fake_run, monkeypatch):
    import robsal.report.html as H

    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page and not (fake_run.run_dir / "report_files").exists()
    monkeypatch.setattr(H, "EMBED_LIMIT_BYTES", 1000)
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert "data:image/png" not in page and 'src="report_files/' in page


def test_viewer_and_grids_say_how_many_images_they_show(fake_run, monkeypatch):
    import robsal.report.html as H

    monkeypatch.setattr(H, "VIEWER_MAX_IMAGES", 2)
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert "The viewer holds the first 2 of the 6 explained images." in page
    assert [img["id"] for img in _viewer_data(page)["images"]] == fake_run.test_ids[:2]
    assert "Up to 2 images per class of the 6 explained" in page


def test_cli_builds_the_report_and_reports_errors(fake_run, tmp_path, capsys):
    from robsal.cli import main

    assert main(["report", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "--run", str(fake_run.run_dir), "--files"]) == 0
    assert (fake_run.run_dir / "report.html").is_file()
    assert "report:" in capsys.readouterr().out


def test_grids_name_under_represented_classes(fake_run):
    from robsal.io import write_json

    classes = list(fake_run.data.classes)
    selected = {c: (0 if i == 0 else 2) for i, c in enumerate(classes)}
    write_json(fake_run.run_dir / "saliency" / "selection.json",
               {"rule": "correct for every model", "n_per_class": 2, "selected": selected})
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert "classified correctly by every model, up to 2 per class" in page
    assert f"Under-represented: {htmllib.escape(classes[0])}</strong>" in page
    selected[classes[0]] = 2
    write_json(fake_run.run_dir / "saliency" / "selection.json",
               {"rule": "correct for every model", "n_per_class": 2, "selected": selected})
    page = build_report(fake_run.run_dir, data=fake_run.data).read_text(encoding="utf-8")
    assert "Under-represented" not in page
