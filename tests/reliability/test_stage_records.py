"""Property tests: damaged run-directory records read by ``robsal evaluate``, ``robsal finetune``
and ``robsal sweep`` give a result or one line (exit 2), never a traceback.

Each stage works on a clone of the session's tiny run (``tiny_run`` in tests/conftest.py; files
hard-linked, and every write here replaces a file instead of changing it in place, so the
session's run is never touched). Each example damages one record the stage reads (random edits
of any field of a JSON record, random arrays, dtypes, shapes and values of a saliency ``.npz``,
random CSV columns, labels and ids, random bytes), runs the stage as the CLI does, and puts the
record back. The sweep folder is the tiny run's two models as the cells of ``eps=0,4`` (what
``robsal sweep --config tiny --grid eps=0,4`` writes, without training them again).

ROBSAL_PROPERTY_EXAMPLES sets the number of examples of each property (default: 20-25 per stage,
drawn the same way every run; with the variable set, randomly; no shrinking, each example runs a stage).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from robsal.errors import UserError

N = int(os.environ.get("ROBSAL_PROPERTY_EXAMPLES", "0"))
# no shrinking: an example runs a whole stage (seconds); the failing example is printed as drawn
PROPS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
         "derandomize": not N, "phases": [Phase.explicit, Phase.reuse, Phase.generate], "database": None}


def examples(default: int) -> settings:
    return settings(max_examples=N or default, **PROPS)


# ----------------------------------------------------------------------------- helpers


def clone(src: Path, dst: Path, skip: tuple[str, ...] = ("figures", "report.html", ".lock")) -> Path:
    """A copy of the run folder ``src`` whose files are hard links (robsal replaces files, never edits them)."""
    def link(s, d):  # noqa: ANN001, ANN202
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, ignore=lambda d, names: [n for n in names if n in skip])
    return dst


def put(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file (a hard-linked original keeps its content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_bytes(data)


@contextlib.contextmanager
def damaged(path: Path, data: bytes | None):
    """``path`` holds ``data`` (None: the file is removed) for the block; then its old content."""
    old = path.read_bytes() if path.exists() else None
    if data is None:
        path.unlink(missing_ok=True)
    else:
        put(path, data)
    try:
        yield
    finally:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            put(path, old)


def as_cli(fn) -> tuple[int, str]:  # noqa: ANN001
    """Run ``fn()`` as ``robsal.cli.main`` runs a command: (exit code, stderr). A UserError or a
    user-fixable OSError is exit 2 with one line; any other exception fails the test."""
    from robsal.cli import file_system_message

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            fn()
        except UserError as exc:
            print(f"robsal: error: {exc}", file=sys.stderr)
            code = 2
        except OSError as exc:
            message = file_system_message(exc)
            if message is None:
                raise
            print(f"robsal: error: {message}", file=sys.stderr)
            code = 2
        else:
            code = 0
    return code, err.getvalue()


def check_outcome(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("robsal: error:")]
    if code == 2:
        assert len(errors) == 1 and stderr.rstrip("\n").endswith(errors[0]), stderr
        assert len(errors[0]) > len("robsal: error: ") + 10
    else:
        assert code == 0 and not errors, stderr


# ----------------------------------------------------------------------------- damage strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["", "nan", "1e400", "-1", "0", "standard", "mel", "ISIC_0024306"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
junk = st.sampled_from([b"", b"{", b"[1, 2", b"\xff\xfe{}", b"NaN", b'{"a": Infinity}', b"\x00" * 8,
                        b"[" * 100_000 + b"]" * 100_000, b"PK\x03\x04broken"]) | st.binary(max_size=80)


def _paths(obj, prefix=()):  # noqa: ANN001, ANN202
    """Every (nested) key path of a JSON document."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += [prefix + (k,)] + _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += [prefix + (i,)] + _paths(v, prefix + (i,))
    return out


@st.composite
def damaged_json(draw, original: bytes):  # noqa: ANN001, ANN201
    """A random edit of a JSON record: one field (at any depth) replaced or deleted, the whole
    document replaced, or bytes that are no JSON at all."""
    kind = draw(st.sampled_from(["field", "field", "field", "delete", "whole", "bytes"]))
    if kind == "bytes":
        return draw(junk)
    if kind == "whole":
        return json.dumps(draw(json_values)).encode()
    doc = json.loads(original)
    # the config a model.json embeds is not read back: edits go to the fields the stages use
    paths = [p for p in _paths(doc) if p[0] != "config" or len(p) == 1]
    if not paths:
        return json.dumps(draw(json_values)).encode()
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return json.dumps(doc).encode()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled here: robsal must refuse them
    return buf.getvalue()


@st.composite
def damaged_npz(draw, original: bytes):  # noqa: ANN001, ANN201
    """A saliency .npz with an array missing, of another dtype or shape, with other values or
    lengths, or a file that is no .npz at all."""
    with np.load(io.BytesIO(original)) as f:
        a = {k: f[k] for k in f.files}
    n = len(a["image_ids"])
    key = draw(st.sampled_from(["maps", "image_ids", "targets", "predictions"]))
    kind = draw(st.sampled_from(["drop", "dtype", "shape", "values", "subset", "bytes", "object"]))
    if kind == "bytes":
        cut = draw(st.integers(0, len(original) - 1))
        return draw(st.sampled_from([original[:cut], b"", _npy(a["maps"])])) if draw(st.booleans()) else draw(junk)
    if kind == "object":
        a[key] = np.array([{"x": 1}] * n, dtype=object)
    elif kind == "drop":
        del a[key]
    elif kind == "dtype":
        dtype = draw(st.sampled_from(["int8", "uint8", "bool", "float16", "float64", "complex64", "U3", "S12",
                                      "int64"]))
        a[key] = a[key].astype(dtype) if dtype[0] not in "US" else a[key].astype(str).astype(dtype)
    elif kind == "shape":
        v = a[key]
        a[key] = draw(st.sampled_from([
            v[:-1], v[:0], np.concatenate([v, v[:1]]), v.reshape(v.shape + (1,)), v.reshape(-1)[:1].reshape(()),
            v[..., :3] if v.ndim == 3 else v.reshape(-1, 1), v[:, :0] if v.ndim == 3 else v.reshape(1, -1),
        ]))
    elif kind == "values":
        v = a[key].copy()
        i = draw(st.integers(0, max(0, n - 1)))
        if key == "maps":
            v[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e38]))
        elif key == "image_ids":
            v = v.astype("U32")
            v[i] = draw(st.sampled_from(["", "ISIC_9999999", "../x", str(v[(i + 1) % n])]))
        else:
            v[i] = draw(st.sampled_from([-1, 3, 99, 2**40, -(2**40)]))
        a[key] = v
    else:  # a consistent subset of the images: other images than the other files
        k = draw(st.integers(0, max(0, n - 1)))
        a = {name: (arr[:k] if arr.ndim and len(arr) == n else arr) for name, arr in a.items()}
    return _npz(a)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@st.composite
def damaged_csv(draw, original: bytes, key_column: str):  # noqa: ANN001, ANN201
    """A CSV record with a column missing or renamed, a row repeated, a cell replaced
    (unknown label or id, text in a number column, empty), only its header, or random bytes."""
    lines = original.decode().splitlines()
    header, rows = lines[0].split(","), [r.split(",") for r in lines[1:]]
    kind = draw(st.sampled_from(["column", "rename", "duplicate", "cell", "cell", "header only", "bytes"]))
    if kind == "bytes":
        return draw(junk)
    if kind == "header only":
        return (lines[0] + "\n").encode()
    if kind in ("column", "rename"):
        j = draw(st.integers(0, len(header) - 1))
        if kind == "column":
            header, rows = header[:j] + header[j + 1:], [r[:j] + r[j + 1:] for r in rows]
        else:
            header[j] = draw(st.sampled_from(["", "x", header[j].upper(), header[j] + " ", key_column]))
    elif kind == "duplicate":
        rows.insert(draw(st.integers(0, len(rows))), rows[draw(st.integers(0, len(rows) - 1))])
    else:
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(header) - 1))
        rows[i][j] = draw(st.sampled_from(["", "mel", "nv", "xyz", "MEL", "test", "train", "val", "2", "-1", "nan",
                                           "1e400", "ISIC_9999999", rows[(i + 1) % len(rows)][j], '"', "a b"])
                          | st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=",\n\r"),
                                    max_size=6))
    return ("\n".join(",".join(r) for r in [header, *rows]) + "\n").encode()


def record_damage(draw, run: Path, rel: str) -> bytes | None:  # noqa: ANN001
    """Damaged bytes for the record ``run/rel`` (None: the record is removed)."""
    path = run / rel
    if draw(st.integers(0, 12)) == 0:
        return None
    original = path.read_bytes() if path.exists() else b"{}"
    if rel.endswith(".npz"):
        return draw(damaged_npz(original))
    if rel.endswith(".csv"):
        return draw(damaged_csv(original, "image_id"))
    if rel.endswith(".jsonl"):
        lines = original.decode().splitlines() or ["{}"]
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(damaged_json(lines[i].encode())).decode("utf-8", "replace")
        return ("\n".join(lines) + "\n").encode()
    return draw(damaged_json(original))


# ----------------------------------------------------------------------------- robsal evaluate


@pytest.fixture(scope="module")
def eval_run(tiny_run, tmp_path_factory):
    """The tiny run with Gradient maps only and the cheap metrics (the record readers are the same)."""
    import yaml

    run = clone(tiny_run, tmp_path_factory.mktemp("records") / "eval")
    for p in (run / "saliency").glob("*/*.npz"):
        if p.stem != "gradient":
            p.unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["metrics"].update(faithfulness=False, sanity=False, sensitivity=False, n_bootstrap=100)
    put(run / "config.yaml", yaml.safe_dump(cfg).encode())
    return run


@pytest.fixture
def no_plots(monkeypatch):
    """The metrics' plots draw what the stage computed, not what it read; they take most of the
    stage's time, so these tests skip them (tests/metrics draws them)."""
    from robsal.metrics import plots

    monkeypatch.setattr(plots, "write_plots", lambda *a, **k: None)


EVAL_RECORDS = ["saliency/standard/gradient.npz", "saliency/robust_eps4/gradient.npz", "models/standard/model.json",
                "models/robust_eps4/model.json", "splits.csv", "data/synth.json"]


@examples(25)
@given(data=st.data(), rel=st.sampled_from(EVAL_RECORDS))
def test_damaged_records_read_by_evaluate_give_metrics_or_one_line(eval_run, no_plots, data, rel):
    from robsal.metrics import evaluate_run

    with damaged(eval_run / rel, record_damage(data.draw, eval_run, rel)):
        code, err = as_cli(lambda: evaluate_run(eval_run, device="cpu", progress=False))
    check_outcome(code, err)
    if code == 0:  # whatever was accepted gave finite per-image values
        import pandas as pd

        assert np.isfinite(pd.read_csv(eval_run / "metrics" / "per_image.csv")["value"]).all()


def test_evaluate_of_the_undamaged_clone_works(eval_run, no_plots):
    from robsal.metrics import evaluate_run

    code, err = as_cli(lambda: evaluate_run(eval_run, device="cpu", progress=False))
    assert code == 0, err
    assert json.loads((eval_run / "metrics" / "summary.json").read_text())["n_images"] >= 1


# ----------------------------------------------------------------------------- robsal sweep

SWEEP_GRID = "eps=0,4"
# tiny, with the saliency and metrics sections of tests/experiments (Gradient only, cheap metrics):
# a damaged stages.json makes the sweep explain and evaluate again
SWEEP_SET = ["device=cpu", "saliency.methods=[gradient]", "metrics.faithfulness=false", "metrics.sanity=false",
             "metrics.sensitivity=false", "metrics.n_bootstrap=100"]
CELL_OF = {"standard": "eps0_seed0", "robust_eps4": "eps4_seed0"}


@pytest.fixture(scope="module")
def sweep_dir(tiny_run, tmp_path_factory):
    """The tiny run as the sweep folder of ``--grid eps=0,4`` (cells eps0_seed0, eps4_seed0): the
    files ``robsal sweep`` writes, its two models trained, explained and evaluated, Gradient only."""
    import pandas as pd

    from robsal.config import load_config
    from robsal.experiments import sweep
    from robsal.io import read_json, write_json
    from robsal.experiments.sweep.ledger import stage_fingerprint
    from robsal.rundir import mark_done
    from robsal.training.train import training_fingerprint

    cfg = load_config("tiny", SWEEP_SET)
    out = clone(tiny_run, tmp_path_factory.mktemp("records") / "sweep", skip=("figures", "report.html", ".lock",
                                                                                "stages.json", "metrics"))
    cells = sweep.make_cells(*sweep.parse_grid(SWEEP_GRID))
    scfg = sweep.sweep_config(cfg, cells)
    put(out / "config.yaml", scfg.to_yaml().encode())
    for old, new in CELL_OF.items():
        (out / "models" / old).rename(out / "models" / new)
        (out / "saliency" / old).rename(out / "saliency" / new)
        for p in (out / "saliency" / new).glob("*.npz"):
            if p.stem != "gradient":
                p.unlink()
        meta = read_json(out / "models" / new / "model.json")
        meta.update(name=new, fingerprint=training_fingerprint(scfg, scfg.model_spec(new)))
        (out / "models" / new / "model.json").unlink()
        write_json(out / "models" / new / "model.json", meta)
    per_image = pd.read_csv(tiny_run / "metrics" / "per_image.csv")
    per_image = per_image[per_image["method"].isin(["gradient", "control_sobel", "control_gaussian"])]
    per_image["model"] = per_image["model"].replace(CELL_OF)
    (out / "metrics").mkdir()
    per_image.to_csv(out / "metrics" / "per_image.csv", index=False)
    summary = read_json(tiny_run / "metrics" / "summary.json")  # what the sweep reads of it: explained_per_class
    summary["models"] = {CELL_OF.get(k, k): v for k, v in summary["models"].items()}
    write_json(out / "metrics" / "summary.json", summary)
    names = [c.name for c in cells]
    for stage in ("explain", "evaluate"):
        mark_done(out, f"sweep_{stage}", fp=stage_fingerprint(scfg, stage, names, "correct"))
    return out


def _sweep(out: Path, figures: bool, train_one):  # noqa: ANN001, ANN202
    from robsal.config import load_config
    from robsal.experiments.sweep import LocalExecutor, run_sweep

    return run_sweep(load_config("tiny", SWEEP_SET), SWEEP_GRID, out, progress=False, figures=figures,
                     executor=LocalExecutor(retries=1, train_one=train_one))


class Retrain(list):
    """The cells the sweep trained again (a list of names); calling it is the sweep's ``train_one``."""

    def __init__(self, saved):  # noqa: ANN001
        super().__init__()
        self.saved = saved

    def __call__(self, cfg, out, data, cell, **kw):  # noqa: ANN001, ANN204
        self.append(cell.name)
        for name, data_ in self.saved[cell.name].items():
            put(out / "models" / cell.name / name, data_)


@pytest.fixture
def retrain_restores(sweep_dir):
    """A cell the sweep trains again gets its original files back (what retraining it would write)."""
    saved = {c: {p.name: p.read_bytes() for p in (sweep_dir / "models" / c).iterdir() if p.is_file()}
             for c in CELL_OF.values()}
    return Retrain(saved)


def test_the_converted_sweep_folder_resumes_without_training(sweep_dir, retrain_restores):
    result = _sweep(sweep_dir, figures=False, train_one=retrain_restores)
    assert retrain_restores == [] and result.failed == [] and result.table is not None
    acc = result.table[(result.table["section"] == "accuracy") & (result.table["metric"] == "clean_accuracy")]
    assert sorted(acc["eps"]) == [0.0, 4.0]
    assert (result.table["section"] == "saliency").any()


SWEEP_RECORDS = ["stages.json", "models/eps0_seed0/model.json", "models/eps4_seed0/model.json", "tune/best.json",
                 "sweep/cells.json", "metrics/per_image.csv", "metrics/summary.json", "saliency/selection.json",
                 "saliency/eps4_seed0/gradient.npz", "models/eps0_seed0/history.jsonl", "splits.csv"]


@examples(20)
@given(data=st.data(), rel=st.sampled_from(SWEEP_RECORDS))
def test_damaged_records_read_by_sweep_give_tables_or_one_line(sweep_dir, retrain_restores, no_plots, monkeypatch,
                                                               data, rel):
    from robsal.experiments.sweep import figures, tables

    # of the sweep's figures only the map grids (Figures 10-11) read a record (the maps); they are
    # made as the sweep makes them, but not drawn: each image grid gets the maps' shapes checked
    grids: list[str] = []

    def method_grid(images, columns, stem, **kw):  # noqa: ANN001, ANN202
        assert all(m.shape == images.shape[:1] + m.shape[1:] and np.isfinite(m).all() for m in columns.values())
        grids.append(stem.name)
        return []

    monkeypatch.setattr(figures, "method_grid", method_grid)
    monkeypatch.setattr(tables, "write_figures", lambda out, cfg, table, ok, data, method: figures._map_grids(
        out, cfg, ok, data, method))
    # the sweep's own output (tables, cells.json, stages.json) is put back too: the next example starts clean
    keep = {p: p.read_bytes() for p in (sweep_dir / "stages.json", sweep_dir / "sweep" / "cells.json") if p.exists()}
    try:
        with damaged(sweep_dir / rel, record_damage(data.draw, sweep_dir, rel)):
            # figures only when the damaged record is a map (Figures 10-11 read them), to keep examples fast
            code, err = as_cli(lambda: _sweep(sweep_dir, figures=rel.endswith(".npz"), train_one=retrain_restores))
            if code == 0 and rel.endswith(".npz"):
                assert grids, "the map grids were not drawn"
    finally:
        for p, b in keep.items():
            put(p, b)
    check_outcome(code, err)


# ----------------------------------------------------------------------------- robsal finetune


@pytest.fixture(scope="module")
def finetune_run(tiny_run, tmp_path_factory):
    """The tiny run with one fine-tuned variant of robust_eps4 (group 5, one epoch)."""
    from robsal.experiments.finetune import FinetuneSettings, run_finetune

    run = clone(tiny_run, tmp_path_factory.mktemp("records") / "ft", skip=("figures", "report.html", ".lock",
                                                                              "saliency", "metrics"))
    run_finetune(run, "robust_eps4", [[5]], settings=FinetuneSettings(max_epochs=1), device="cpu",
                 progress=False, figures=False)
    return run


def _finetune(run: Path):  # noqa: ANN202
    from robsal.experiments.finetune import FinetuneSettings, run_finetune

    return run_finetune(run, "robust_eps4", [[5]], settings=FinetuneSettings(max_epochs=1), device="cpu",
                        progress=False, figures=False)


FINETUNE_RECORDS = ["models/robust_eps4/model.json", "models/standard/model.json",
                    "models/robust_eps4_ft5/model.json", "models/robust_eps4_ft5/history.jsonl",
                    "models/standard/history.jsonl", "splits.csv"]


@examples(20)
@given(data=st.data(), rel=st.sampled_from(FINETUNE_RECORDS))
def test_damaged_records_read_by_finetune_give_a_table_or_one_line(finetune_run, data, rel):
    variant = finetune_run / "models" / "robust_eps4_ft5"
    keep = {p: p.read_bytes() for p in variant.iterdir() if p.is_file()}
    try:
        with damaged(finetune_run / rel, record_damage(data.draw, finetune_run, rel)):
            code, err = as_cli(lambda: _finetune(finetune_run))
    finally:  # a variant trained again is put back as it was
        for p in variant.iterdir():
            if p.is_file() and p not in keep:
                p.unlink()
        for p, b in keep.items():
            put(p, b)
    check_outcome(code, err)


@pytest.mark.parametrize("key", ["finetune", "metrics", "fingerprint"])
def test_a_variant_whose_model_json_lacks_a_key_is_fine_tuned_again(finetune_run, key):
    """The keys that make a variant complete: without one, it is trained again (no KeyError)."""
    variant = finetune_run / "models" / "robust_eps4_ft5"
    keep = {p: p.read_bytes() for p in variant.iterdir() if p.is_file()}
    meta = json.loads(keep[variant / "model.json"])
    del meta[key]
    try:
        with damaged(variant / "model.json", json.dumps(meta).encode()):
            code, err = as_cli(lambda: _finetune(finetune_run))
            assert code == 0, err
            assert json.loads((variant / "model.json").read_text())[key] is not None  # written again
    finally:
        for p, b in keep.items():
            put(p, b)


# ----------------------------------------------------------------------------- the readers alone (fast)

# each JSON record robsal reads back, and the one load that checks it
RECORD_OF = {"run.json": "RunInfo", "stages.json": "StageLedger", "models/standard/model.json": "ModelRecord",
             "models/robust_eps4/model.json": "ModelRecord", "saliency/selection.json": "Selection",
             "metrics/summary.json": "Summary", "tune/best.json": "TuneBest"}


@examples(100)
@given(data=st.data(), rel=st.sampled_from([*RECORD_OF, "sweep/cells.json"]))
def test_every_json_record_loads_or_gives_a_one_line_record_error(tiny_run, tmp_path_factory, data, rel):
    import robsal.rundir
    from robsal.io import read_json
    from robsal.rundir import RecordError

    original = (tiny_run / rel).read_bytes() if (tiny_run / rel).exists() else \
        b'{"lr": 0.001, "batch_size": 16}' if rel.endswith("best.json") else b'{"eps0_seed0": {"state": "done"}}'
    path = tmp_path_factory.mktemp("rec") / Path(rel).name
    put(path, data.draw(damaged_json(original)))
    load = getattr(robsal.rundir, RECORD_OF[rel]).load if rel in RECORD_OF else read_json  # cells.json: copied only
    try:
        rec = load(path)
    except RecordError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    if rel.endswith("best.json"):
        assert rec.lr > 0 and np.isfinite(rec.lr) and rec.batch_size >= 1
    elif rel in RECORD_OF:
        assert type(rec).__name__ == RECORD_OF[rel] and isinstance(rec.to_dict(), dict)
    else:
        assert isinstance(rec, dict)


@examples(100)
@given(lines=st.lists(st.sampled_from(['{"lr": 0.001, "batch_size": 16, "fold": 0, "accuracy": 0.5}', ""])
                      | json_values.map(json.dumps) | st.text(max_size=20), max_size=4))
def test_cross_validation_log_lines_read_or_give_one_line(tmp_path_factory, lines):
    from robsal.rundir import RecordError, read_folds

    path = tmp_path_factory.mktemp("cv") / "folds.jsonl"
    put(path, "\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        done = read_folds(path)
    except RecordError as exc:
        assert "\n" not in str(exc) and "folds.jsonl" in str(exc)
        return
    assert all(0 <= a <= 1 and lr > 0 and bs >= 1 for (lr, bs, _), a in done.items())


def test_a_record_that_is_a_pipe_is_refused_without_blocking(tmp_path):
    from robsal.io import read_json
    from robsal.rundir import ModelRecord, RecordError, read_per_image, read_saliency

    for name in ("model.json", "gradient.npz", "per_image.csv"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(RecordError, match="not a regular file"):
        read_json(tmp_path / "model.json")
    with pytest.raises(RecordError, match="not a regular file"):
        read_saliency(tmp_path / "gradient.npz")
    with pytest.raises(RecordError, match="not a regular file"):
        read_per_image(tmp_path / "per_image.csv")
    with pytest.raises(RecordError):
        ModelRecord.load(tmp_path / "model.json")
