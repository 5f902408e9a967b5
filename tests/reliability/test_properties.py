"""Property-based tests: random configs and random CSV rows never cause an unhandled exception.

Whatever a user types (a YAML config, a --set override, a metadata or splits CSV), robsal
either accepts it or raises a :class:`~robsal.errors.UserError` (one line, exit 2). Accepted
configs also satisfy the ranges the rest of the code relies on.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from robsal.config import Config, from_dict, load_config
from robsal.data.ham10000 import read_ham10000
from robsal.data.index import Problems
from robsal.data.pipeline import check_contained
from robsal.data.splits import read_splits
from robsal.errors import ConfigError, DataError, UserError

# 80 examples per property in the suite; ROBSAL_PROPERTY_EXAMPLES=5000 for a deeper search
FAST = settings(max_examples=int(os.environ.get("ROBSAL_PROPERTY_EXAMPLES", "80")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ----------------------------------------------------------------------------- configs

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["1e-3", "l2", "linf", "head", "all", "auto", "cpu", "lesion", "image", "paper", "", "nan"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
BASE = load_config("tiny", ["device=cpu"]).to_dict()


def paths_of(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += paths_of(v, prefix + (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):  # models: [{name, eps, seed}]
            for i, item in enumerate(v):
                out += [prefix + (k, i, kk) for kk in item]
    return out


PATHS = paths_of(BASE)


def like(value):
    """Random values of the same kind as ``value`` (edge cases included)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, -1, 1, 2**63, 2**64])
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, -1e-9, 1e308])
    if isinstance(value, str):
        return st.text(max_size=10) | st.sampled_from(["", ".", "..", "../x", "a/b"])
    if isinstance(value, list) and value and not isinstance(value[0], dict):
        return st.lists(like(value[0]), max_size=4)
    return values


def get(d, path):
    for part in path:
        d = d[part]
    return d


@st.composite
def mutated_configs(draw):
    """The tiny preset with 1-3 fields replaced: mostly by values of the field's own kind
    (negative, huge, NaN, infinite, empty), sometimes by anything, sometimes under a new key."""
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            parent, old = get(d, path[:-1]), get(d, path)
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced a parent
            continue
        if not isinstance(parent, (dict, list)):
            continue
        kind = draw(st.sampled_from(["like", "like", "like", "any", "new key"]))
        if kind == "new key" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent[path[-1]] = draw(like(old) if kind == "like" else values)
    return d


def check_accepted(cfg: Config) -> None:
    """Ranges every accepted config must satisfy (the issue's list, and what training relies on)."""

    def floats(obj, key=""):
        if isinstance(obj, float):
            assert math.isfinite(obj), key
        elif isinstance(obj, dict):
            for k, v in obj.items():
                floats(v, f"{key}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                floats(v, f"{key}[{i}]")

    floats(cfg.to_dict())
    assert cfg.data.image_size >= 16 and len(cfg.data.classes) >= 2
    assert all(m.eps >= 0 for m in cfg.models) and all(e >= 0 for e in cfg.robustness.eps)
    assert cfg.adversary.steps >= 1 and cfg.robustness.steps >= 1
    assert cfg.train.eval_batch_size >= 1 and cfg.train.phase1.batch_size >= 1 and cfg.train.phase2.batch_size >= 1
    assert cfg.adversary.eps_reference_size is None or cfg.adversary.eps_reference_size >= 1
    for seed in (cfg.seed, cfg.data.seed, cfg.data.synth.seed, *[m.seed for m in cfg.models if m.seed is not None]):
        assert 0 <= seed < 2**63
    assert cfg.robustness.max_images is None or cfg.robustness.max_images >= 1
    assert all(lr > 0 for lr in cfg.tune.lrs) and all(b >= 1 for b in cfg.tune.batch_sizes)
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # what run directories store reloads
    cfg.to_yaml()


def accept_or_config_error(make) -> None:
    try:
        cfg = make()
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    check_accepted(cfg)


@FAST
@given(mutated_configs())
def test_random_config_fields_give_a_config_or_a_config_error(d):
    accept_or_config_error(lambda: from_dict(d))


@FAST
@given(st.dictionaries(st.text(max_size=10) | st.sampled_from(sorted(BASE)), values, max_size=5) | values)
def test_arbitrary_mappings_and_values_give_a_config_or_a_config_error(d):
    accept_or_config_error(lambda: from_dict(d))


@FAST
@given(st.sampled_from([".".join(map(str, p)) for p in PATHS if not any(isinstance(x, int) for x in p)])
       | st.text(max_size=15), st.text(max_size=20))
def test_random_set_overrides_give_a_config_or_a_config_error(key, value):
    accept_or_config_error(lambda: load_config("tiny", [f"{key}={value}"]))


# ----------------------------------------------------------------------------- CSV rows

IDS = ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
cells = (
    st.sampled_from(IDS + ["../../etc/passwd", "/etc/passwd", "..", ".", "", " ", "ISIC_0000001.jpg",
                           "sub/ISIC_0000001", "..\\x", "mel", "nv", "bkl", "MEL", "train", "test", "val",
                           "1", "0", "-1", "1.5", "nan", "NA", "\x00", "é", "ISIC_0000001\x00"])
    | st.text(max_size=12)
)
HEADERS = ["lesion_id", "image_id", "dx", "DX", "Image_ID", "age", "split", "fold", "label", "", "dx "]


@st.composite
def csv_texts(draw):
    header = draw(st.lists(st.sampled_from(HEADERS) | st.text(max_size=6), min_size=0, max_size=6))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 2), max_size=6))
    if draw(st.booleans()):  # well-formed CSV (quoted as needed)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
    return "\n".join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n", '"', "\n,,,\n"]))


@pytest.fixture(scope="module")
def ham_root():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ham"
        (root / "images").mkdir(parents=True)
        for i, iid in enumerate(IDS):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "images" / f"{iid}.jpg")
        (Path(tmp) / "ISIC_9999999.jpg").write_bytes(b"outside the root")
        yield root


@FAST
@given(text=csv_texts(), raw=st.none() | st.binary(max_size=64))
def test_random_metadata_rows_give_an_index_or_a_data_error(ham_root, text, raw):
    meta = ham_root / "HAM10000_metadata.csv"
    if raw is not None:
        meta.write_bytes(raw)
    else:
        meta.write_text(text, encoding="utf-8", errors="surrogatepass")
    for collect in (False, True):
        problems = Problems(collect=collect)
        try:
            index = read_ham10000(ham_root, problems)
        except DataError as exc:
            assert "\n" not in str(exc)
            continue
        assert all("\n" not in p for p in problems.items)
        assert set(index.table["image_id"]) <= set(IDS)  # only real files inside the root
        check_contained(index)


@FAST
@given(text=csv_texts())
def test_random_splits_rows_give_splits_or_a_data_error(ham_root, text):
    path = ham_root.parent / "splits.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        df = read_splits(path)
    except UserError as exc:
        assert isinstance(exc, DataError) and "\n" not in str(exc)
        return
    assert set(df["split"]) <= {"train", "val", "test"}
    assert df["image_id"].is_unique


# ----------------------------------------------------------------------------- model.json

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    from robsal.models import build_model, save

    d = tmp_path_factory.mktemp("model") / "m"
    save(build_model("resnet18", ["a", "b", "c"], image_size=32), d)
    return d


@FAST
@given(key=st.sampled_from(["arch", "classes", "mean", "std", "image_size", "eps", "eps_l2", "metrics", "seed"]),
       value=_json_values, whole=st.booleans())
def test_random_model_json_edits_load_or_give_a_checkpoint_error(saved_model_dir, key, value, whole):
    import json
    import shutil

    from robsal.errors import CheckpointError
    from robsal.models import load

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "m"
        shutil.copytree(saved_model_dir, d)
        meta = json.loads((d / "model.json").read_text())
        edited = value if whole else {**meta, key: value}
        (d / "model.json").write_text(json.dumps(edited))
        try:
            model = load(d)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
        except ConfigError as exc:  # e.g. an arch name torchvision does not know
            assert "\n" not in str(exc)
        else:
            assert model.meta["classes"] == meta["classes"] or key == "classes"


# ----------------------------------------------------------------------------- run records


@FAST
@given(name=st.sampled_from(["stages.json", "metrics/summary.json", "models/standard/history.jsonl",
                             "models/standard/model.json", "saliency/selection.json", "run.json"]),
       value=_json_values)
def test_random_run_records_give_a_report_or_a_user_error(name, value):
    import json

    from robsal.report.html import build_report

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / "config.yaml").write_text("base: tiny\n")
        path = run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value) + "\n")
        try:
            assert build_report(run).exists()
        except UserError as exc:
            assert "\n" not in str(exc)


# ----------------------------------------------------------------------------- image files


@FAST
@given(kind=st.sampled_from(["L", "RGB", "RGBA", "I;16", "I", "F", "1", "P", "LA", "bytes"]),
       h=st.integers(1, 40), w=st.integers(1, 40), fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "BMP"]),
       seed=st.integers(0, 2**16), junk=st.binary(max_size=64))
def test_random_image_files_decode_to_0_255_or_give_a_data_error(kind, h, w, fmt, seed, junk):
    from robsal.data.cache import load_image

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt.lower()}"
        try:
            if kind == "bytes":
                path.write_bytes(junk)
            else:
                dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}.get(kind, np.uint8)
                shape = (h, w, {"RGB": 3, "RGBA": 4, "LA": 2}.get(kind, 1))
                arr = (rng.random(shape) * (65535 if dtype != np.uint8 else 255)).astype(dtype).squeeze(-1) \
                    if shape[-1] == 1 else (rng.random(shape) * 255).astype(np.uint8)
                im = Image.fromarray(arr > 127) if kind == "1" else Image.fromarray(arr) if kind != "P" \
                    else Image.fromarray(arr).convert("P")
                im.save(path, format=fmt)
        except (OSError, ValueError, KeyError, TypeError):
            return  # this format cannot store this mode: nothing to decode
        try:
            img, wh = load_image(path, 16)
        except DataError as exc:
            assert "\n" not in str(exc) and "x." in str(exc)
        else:
            assert img.shape == (3, 16, 16) and img.dtype == np.uint8 and wh[0] >= 1
