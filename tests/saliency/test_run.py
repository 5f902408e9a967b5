"""explain_run and `robsal explain` on a run directory built by hand (tiny preset, 32 px)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from robsal.cli import main
from robsal.config import load_config
from robsal.data import PreparedData
from robsal.errors import CheckpointError, ConfigError, DataError
from robsal.io import load_npz, read_json
from robsal.models import build_model, save
from robsal.rundir import init_run
from robsal.saliency import explain, explain_run, reduce_channels

METHODS = ["gradient", "integrated_gradients_uniform", "gradcam"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run: config, splits and cached images (synthetic), two random ResNet-18s."""
    from robsal.data import prepare

    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", ["device=cpu", "saliency.ig_steps=4", "saliency.figure_images=2"])
    init_run(cfg, run_dir)
    data = prepare(cfg, run_dir, progress=False)
    torch.manual_seed(0)
    std = build_model("resnet18", cfg.data.classes, image_size=cfg.data.image_size).eval()
    rob = build_model("resnet18", cfg.data.classes, image_size=cfg.data.image_size).eval()
    rob.load_state_dict(std.state_dict())
    with torch.no_grad():  # a slightly different second model that mostly agrees
        rob.net.fc.weight.add_(0.01 * torch.randn_like(rob.net.fc.weight))
    save(std, run_dir / "models" / "standard", eps=0.0)
    save(rob, run_dir / "models" / "robust_eps4", eps=4.0)
    # Random models are rarely right; relabel every image with the standard model's
    # prediction so that "correct for every model" selects images.
    x, _ = data.batch(np.arange(len(data)))
    with torch.no_grad():
        pred = std(x).argmax(1).numpy()
    relabelled = PreparedData(
        images=data.images, labels=pred.astype(np.int64), classes=data.classes, splits=data.splits
    )
    return run_dir, cfg, data, relabelled, std, rob


def test_explain_run_writes_maps_and_figures(run):
    run_dir, cfg, _, data, std, rob = run
    out = explain_run(run_dir, methods=METHODS, n_per_class=1, device="cpu", progress=False, data=data)
    assert set(out) == {"standard", "robust_eps4"} and all(set(v) == set(METHODS) for v in out.values())
    ref = load_npz(run_dir / "saliency" / "standard" / "gradient.npz")
    ids = ref["image_ids"]
    rows = data.rows_of(ids.tolist())
    assert 1 <= len(ids) <= len(cfg.data.classes)
    assert set(data.splits["split"].iloc[rows]) == {"test"}
    for k in range(len(cfg.data.classes)):
        assert (data.labels[rows] == k).sum() <= 1
    sel = read_json(run_dir / "saliency" / "selection.json")
    assert sel["rule"] == "correct for every model" and sel["n_per_class"] == 1
    assert sum(sel["selected"].values()) == len(ids)
    for name, model in (("standard", std), ("robust_eps4", rob)):
        for method in METHODS:
            arr = load_npz(run_dir / "saliency" / name / f"{method}.npz")
            assert arr["maps"].dtype == np.float32 and arr["maps"].shape == (len(ids), 32, 32)
            assert arr["image_ids"].tolist() == ids.tolist()  # same images, same order
            assert arr["targets"].dtype == np.int64 and arr["predictions"].dtype == np.int64
            np.testing.assert_array_equal(arr["targets"], data.labels[rows])  # target = true label
            np.testing.assert_array_equal(arr["predictions"], data.labels[rows])  # all correct
            assert (arr["maps"] >= 0).all() and arr["maps"].max() > 0
    # the saved gradient map is sum_c |d logit / d x| of those images, before any capping
    x, y = data.batch(rows)
    expected = reduce_channels(explain(rob, x, y, "gradient"))
    np.testing.assert_allclose(load_npz(out["robust_eps4"]["gradient"])["maps"], expected, rtol=1e-5, atol=1e-8)
    figs = run_dir / "figures"
    for method in METHODS:
        assert (figs / f"saliency_{method}.png").stat().st_size > 0
        assert (figs / f"saliency_{method}.pdf").stat().st_size > 0
    per_image = sorted(figs.glob("saliency_image_*.png"))
    assert 1 <= len(per_image) <= 2 and len(list(figs.glob("saliency_image_*.pdf"))) == len(per_image)


def test_explain_run_is_deterministic_and_honours_image_ids(run):
    run_dir, _, _, data, _, _ = run
    ids = [data.image_ids[i] for i in data.indices("test")[[3, 0]]]
    kw = dict(models=["standard"], methods=["integrated_gradients_uniform"], image_ids=ids, device="cpu", progress=False, data=data)
    a = load_npz(explain_run(run_dir, figures=False, **kw)["standard"]["integrated_gradients_uniform"])
    b = load_npz(explain_run(run_dir, figures=False, **kw)["standard"]["integrated_gradients_uniform"])
    assert a["image_ids"].tolist() == ids
    np.testing.assert_array_equal(a["maps"], b["maps"])
    # files of the earlier selection (other images) are gone: one image list per run
    left = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "saliency").glob("*/*.npz"))
    assert left == ["saliency/standard/integrated_gradients_uniform.npz"]


def test_explain_run_errors_name_the_culprit(run):
    run_dir, _, _, data, _, _ = run
    with pytest.raises(CheckpointError, match="nope"):
        explain_run(run_dir, models=["nope"], methods=["gradient"], device="cpu", progress=False, data=data)
    with pytest.raises(ConfigError, match="known methods"):
        explain_run(run_dir, methods=["gradient", "shap"], device="cpu", progress=False, data=data)
    wrong = PreparedData(images=data.images, labels=(data.labels + 1) % 3, classes=data.classes, splits=data.splits)
    with pytest.raises(DataError, match="classified correctly"):
        explain_run(run_dir, methods=["gradient"], device="cpu", progress=False, data=wrong)


def test_cli_explain_run(run, capsys):
    run_dir, _, data, _, _, _ = run
    ids = [data.image_ids[i] for i in data.indices("test")[:2]]
    rc = main(["explain", "--run", str(run_dir), "--images", *ids, "--methods", "gradcam", "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    arr = load_npz(run_dir / "saliency" / "standard" / "gradcam.npz")
    assert arr["image_ids"].tolist() == ids
    # the run's own labels (from splits.csv) are the targets
    np.testing.assert_array_equal(arr["targets"], data.labels[data.rows_of(ids)])
    assert (run_dir / "figures" / "saliency_gradcam.pdf").exists()


def test_cli_explain_image_files(run, tmp_path, capsys):
    from PIL import Image

    run_dir = run[0]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "lesion.png")
    out = tmp_path / "out"
    rc = main([
        "explain", "--model", str(run_dir / "models" / "standard"), "--model", str(run_dir / "models" / "robust_eps4"),
        "--image", str(tmp_path / "lesion.png"), "--method", "gradient", "smoothgrad", "--target", "nv",
        "--out", str(out), "--config", "tiny", "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    arr = load_npz(out / "saliency" / "robust_eps4" / "smoothgrad.npz")
    assert arr["maps"].shape == (1, 32, 32) and arr["image_ids"].tolist() == ["lesion"]
    assert arr["targets"].tolist() == [1]  # nv
    assert (out / "figures" / "saliency_image_lesion.png").exists()
    rc = main(["explain", "--model", str(run_dir / "models" / "standard"), "--image", str(tmp_path / "missing.jpg"),
               "--out", str(out), "--config", "tiny", "--no-progress"])  # fmt: skip
    assert rc == 2 and "missing.jpg" in capsys.readouterr().err


def test_load_image_crops_the_centre(tmp_path):
    from PIL import Image

    from robsal.saliency.images import load_image

    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, 10:30] = 200  # the central 20x20 square is bright, the sides black
    Image.fromarray(a).save(tmp_path / "x.png")
    img = load_image(tmp_path / "x.png", 10)
    assert img.shape == (3, 10, 10) and img.dtype == np.uint8
    assert img.min() >= 190  # only the centre survives the crop


class _Fake:
    """Just what select_images needs: test rows, labels, classes and batches."""

    def __init__(self, labels):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = ["mel", "nv", "bkl"]

    def indices(self, split):
        return np.arange(len(self.labels))

    def batch(self, idx, device=None):
        x = torch.zeros(len(idx), 1)
        x[:, 0] = torch.as_tensor(np.asarray(idx), dtype=torch.float32)  # the row index rides in x
        return x, torch.from_numpy(self.labels[idx])


class _Lookup(torch.nn.Module):
    """Predicts a fixed class per row (the row index is the input)."""

    def __init__(self, preds):
        super().__init__()
        self.preds = torch.as_tensor(preds)

    def forward(self, x):
        return torch.nn.functional.one_hot(self.preds[x[:, 0].long()], 3).float()


def test_select_images_warns_about_a_class_no_model_agrees_on():
    from robsal.saliency.run import select_images

    labels = [0] * 6 + [1] * 6 + [2] * 6
    a = _Lookup(labels)                       # always right
    b = _Lookup([1] * 6 + labels[6:])         # never predicts class 0 (mel)
    with pytest.warns(UserWarning, match=r"class 'mel': only 0 of the 3"):
        rows = select_images(_Fake(labels), {"a": a, "b": b}, 3, seed=0, device=torch.device("cpu"))
    assert [labels[r] for r in rows] == [1, 1, 1, 2, 2, 2]  # correct for every model only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough agreed images: no warning
        rows = select_images(_Fake(labels), {"a": a}, 3, seed=0, device=torch.device("cpu"))
    assert [labels[r] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
