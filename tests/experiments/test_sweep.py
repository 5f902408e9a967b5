"""``robsal sweep``: every cell trained, explained and evaluated; resume after a kill; retries;
the aggregate table; the same table through a local Ray cluster."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from robsal.experiments import sweep
from robsal.experiments.sweep import LocalExecutor, run_sweep

from .conftest import GRID, SWEEP_OVERRIDES

CELLS = ["eps0_seed0", "eps0_seed1", "eps1_seed0", "eps1_seed1"]


@pytest.fixture(scope="module")
def killed_and_resumed(_one_thread, sweep_cfg, tmp_path_factory):
    """A 2x2 sweep killed when its second cell starts, then resumed with one transient failure."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    real = sweep.train_cell
    first_run: list[str] = []

    def killed_after_one(cfg, out_dir, data, cell, **kw):
        if first_run:
            raise KeyboardInterrupt  # what Ctrl-C / a kill looks like inside the process
        first_run.append(cell.name)
        real(cfg, out_dir, data, cell, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_cfg, GRID, out, progress=False, images="all", executor=LocalExecutor(train_one=killed_after_one))
    weights = out / "models" / first_run[0] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    digest = weights.read_bytes()

    second_run: list[str] = []

    def flaky(cfg, out_dir, data, cell, **kw):
        second_run.append(cell.name)
        if cell.name == "eps1_seed1" and second_run.count(cell.name) == 1:
            raise RuntimeError("injected failure")
        real(cfg, out_dir, data, cell, **kw)

    result = run_sweep(sweep_cfg, GRID, out, progress=False, images="all", executor=LocalExecutor(train_one=flaky))
    return {"out": out, "first": first_run, "second": second_run, "mtime": mtime, "weights": digest,
            "result": result}


def test_killed_sweep_resumes_without_redoing_finished_cells(killed_and_resumed):
    k = killed_and_resumed
    assert k["first"] == ["eps0_seed0"]
    weights = k["out"] / "models" / "eps0_seed0" / "model.safetensors"
    assert weights.stat().st_mtime_ns == k["mtime"] and weights.read_bytes() == k["weights"]
    # the finished cell is not trained again; the failing one twice (retried once)
    assert k["second"] == ["eps0_seed1", "eps1_seed0", "eps1_seed1", "eps1_seed1"]
    cells = json.loads((k["out"] / "sweep" / "cells.json").read_text())
    assert cells["eps0_seed0"]["state"] == "done" and cells["eps0_seed0"]["attempts"] == 0
    assert cells["eps1_seed1"]["state"] == "trained" and cells["eps1_seed1"]["attempts"] == 2
    assert cells["eps1_seed1"]["errors"] == ["RuntimeError: injected failure"]
    assert k["result"].failed == []


def test_sweep_writes_every_cell_and_the_aggregate_table(killed_and_resumed):
    out = killed_and_resumed["out"]
    table = pd.read_csv(out / "sweep" / "table.csv")
    metas = {}
    for name in CELLS:
        meta = json.loads((out / "models" / name / "model.json").read_text())
        eps, seed = float(name[3:].split("_")[0]), int(name.split("seed")[1])
        assert meta["eps"] == eps and meta["seed"] == seed and "clean_accuracy" in meta["metrics"]
        assert (out / "saliency" / name / "gradient.npz").exists()
        metas[name] = meta["metrics"]
    # one split for every cell
    assert (out / "splits.csv").exists() and len(list(out.glob("**/splits.csv"))) == 1

    acc = table[(table["section"] == "accuracy") & (table["metric"] == "clean_accuracy")].set_index("eps")
    for eps, names in ((0.0, CELLS[:2]), (1.0, CELLS[2:])):
        vals = [metas[n]["clean_accuracy"] for n in names]
        assert acc.loc[eps, "n_seeds"] == 2
        assert acc.loc[eps, "mean"] == pytest.approx(np.mean(vals), abs=1e-6)
        assert acc.loc[eps, "sd_seeds"] == pytest.approx(np.std(vals, ddof=1), abs=1e-6)
        assert acc.loc[eps, "min"] == pytest.approx(min(vals), abs=1e-6)
    rob = table[table["metric"] == "robust_accuracy@1"].set_index("eps")
    assert rob.loc[1.0, "mean"] == pytest.approx(np.mean([metas[n]["robust_accuracy"]["1"] for n in CELLS[2:]]),
                                                 abs=1e-6)

    # a saliency row recomputed from the per-image table: mean over images of the seed means
    per = pd.read_csv(out / "metrics" / "per_image.csv")
    d = per[per["model"].isin(CELLS[2:]) & (per["method"] == "gradient") & (per["metric"] == "gini")]
    expect = d.groupby("image_id")["value"].mean().mean()
    row = table[(table["section"] == "saliency") & (table["eps"] == 1.0) & (table["metric"] == "gini")].iloc[0]
    assert row["mean"] == pytest.approx(expect, rel=1e-5)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n_seeds"] == 2
    assert row["n_images"] == d["image_id"].nunique() == 6  # 2 per class, 3 classes

    # seed stability per eps (Figure 10): the pairwise similarity of the two seeds' maps
    stab = table[table["section"] == "stability"]
    assert set(stab["eps"]) == {0.0, 1.0} and set(stab["metric"]) == {"seed_spearman", "seed_ssim"}
    s = per[(per["model"] == "seeds_eps0") & (per["metric"] == "seed_spearman")]["value"].mean()
    assert stab[(stab["eps"] == 0.0) & (stab["metric"] == "seed_spearman")]["mean"].iloc[0] == pytest.approx(s, rel=1e-5)

    doc = json.loads((out / "sweep" / "table.json").read_text())
    assert len(doc["rows"]) == len(table) and doc["grid"] == {"eps": [0.0, 1.0], "seed": [0, 1]}
    # the competence gate over the cells: recomputed here from each cell's per-class test recall
    expected = []
    for cell in ("eps0_seed0", "eps0_seed1", "eps1_seed0", "eps1_seed1"):
        recall = json.loads((out / "models" / cell / "model.json").read_text())["metrics"]["per_class_accuracy"]
        expected += [f"{cell} recalls {c} at {v:.2f} (< 0.50)" for c, v in recall.items() if v < 0.5]
    assert doc["gate"]["reasons"] == expected and doc["comparable"] is (not expected)
    assert set(doc["gate"]["per_eps"]) == {"0", "1"}
    assert (table[table["section"] != "accuracy"]["comparable"] == (not expected)).all()
    assert table[table["section"] == "accuracy"]["comparable"].isna().all()
    opt = json.loads((out / "sweep" / "optimal_eps.json").read_text())
    assert opt["n_images"] == 6 and sum(opt["counts"].values()) == 6
    assert opt["share_in_band"] == 0.0  # no eps of this grid lies in [3, 5]
    for stem in ("sweep_accuracy", "sweep_metrics_gradient", "sweep_stability", "sweep_grid_gradient",
                 "sweep_seeds_gradient_eps1", "sweep_optimal_eps"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 0


def test_rerun_skips_every_finished_cell_and_stage(killed_and_resumed, sweep_cfg):
    out = killed_and_resumed["out"]
    per_image = out / "metrics" / "per_image.csv"
    before = per_image.stat().st_mtime_ns

    def must_not_train(*a, **kw):
        raise AssertionError("a finished cell was trained again")

    result = run_sweep(sweep_cfg, GRID, out, progress=False, images="all", figures=False,
                       executor=LocalExecutor(train_one=must_not_train))
    assert result.failed == [] and {s.state for s in result.cells.values()} == {"done"}
    assert per_image.stat().st_mtime_ns == before  # explain and evaluate were not redone


def test_cli_sweep_on_a_finished_sweep_and_bad_grid(killed_and_resumed, capsys):
    from robsal.cli import main

    out = killed_and_resumed["out"]
    sets = [a for o in SWEEP_OVERRIDES for a in ("--set", o)]
    rc = main(["sweep", "--config", "tiny", *sets, "--grid", GRID, "--out", str(out), "--images", "all",
               "--no-progress", "--no-figures"])
    text = capsys.readouterr().out
    assert rc == 0 and "eps 0 (2 seeds): clean" in text and "eps 1 (2 seeds)" in text
    rc = main(["sweep", "--config", "tiny", "--grid", "eps=0,x", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "robsal: error: --grid: eps values must be numbers, got '0,x'"


def test_failed_cell_is_reported_and_the_others_go_on(killed_and_resumed, sweep_cfg, tmp_path):
    src = killed_and_resumed["out"]
    out = tmp_path / "sw"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(out / "models" / "eps1_seed1")
    attempts: list[str] = []

    def broken(cfg, out_dir, data, cell, **kw):
        attempts.append(cell.name)
        raise ValueError("cannot train this cell")

    result = run_sweep(sweep_cfg, GRID, out, progress=False, images="all", figures=False,
                       executor=LocalExecutor(train_one=broken))
    assert attempts == ["eps1_seed1", "eps1_seed1"]
    assert result.failed == ["eps1_seed1"]
    assert result.cells["eps1_seed1"].errors == ["ValueError: cannot train this cell"] * 2
    # the other three cells are explained, evaluated and aggregated; the failed one is nowhere
    assert sorted(p.name for p in (out / "saliency").iterdir() if p.is_dir()) == CELLS[:3]
    per = pd.read_csv(out / "metrics" / "per_image.csv")
    assert "eps1_seed1" not in set(per["model"]) and "seeds_eps1" not in set(per["model"])
    table = result.table
    acc = table[(table["section"] == "accuracy") & (table["metric"] == "clean_accuracy")].set_index("eps")
    assert acc.loc[1.0, "n_seeds"] == 1 and acc.loc[0.0, "n_seeds"] == 2
    assert set(table[table["section"] == "stability"]["eps"]) == {0.0}


def test_grid_parsing_and_errors():
    from robsal.errors import ConfigError
    from robsal.experiments.sweep import make_cells, parse_grid

    assert parse_grid("eps=4,0,1;seed=2,0", 0) == ([0.0, 1.0, 4.0], [0, 2])
    assert parse_grid("eps=0.5", 3) == ([0.5], [3])
    assert [c.name for c in make_cells([0.0, 0.5], [1])] == ["eps0_seed1", "eps0.5_seed1"]
    for bad, msg in (("seed=1", "needs eps"), ("eps=0;lr=1", "unknown key 'lr'"), ("eps=1,1", "twice"),
                     ("eps=-1", ">= 0"), ("eps=1;eps=2", "given twice"), ("eps", "must look like")):
        with pytest.raises(ConfigError, match=msg):
            parse_grid(bad)


def test_a_sweep_refuses_another_config_but_accepts_a_grown_grid(sweep_cfg, tmp_path):
    from robsal.errors import ConfigError
    from robsal.experiments.sweep import init_sweep, make_cells, sweep_config

    small = sweep_config(sweep_cfg, make_cells([0.0], [0]))
    init_sweep(small, tmp_path)
    init_sweep(sweep_config(sweep_cfg, make_cells([0.0, 1.0], [0])), tmp_path)  # grown: accepted
    with pytest.raises(ConfigError, match="another config"):
        init_sweep(small, tmp_path)  # shrunk: its extra cell would linger
    other = sweep_config(sweep_cfg, make_cells([0.0, 1.0], [0]))
    other.train.phase2.lr = 0.5
    with pytest.raises(ConfigError, match="train.phase2.lr"):
        init_sweep(other, tmp_path)


def test_ray_sweep_gives_the_same_table(killed_and_resumed, sweep_cfg, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'robsal[ray]')")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(sweep_cfg, GRID, tmp_path / "sw", progress=False, images="all",
                           ray_address="auto", ray_cpus=1, figures=False)
    finally:
        ray.shutdown()
    assert result.failed == [] and {s.state for s in result.cells.values()} == {"trained"}
    local = pd.read_csv(killed_and_resumed["out"] / "sweep" / "table.csv")
    remote = pd.read_csv(tmp_path / "sw" / "sweep" / "table.csv")
    pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=1e-6, atol=1e-9)


class _FakeRay:
    """Just enough of the ``ray`` API for the driver loop: tasks run at ``get`` and may fail."""

    def __init__(self, files: dict[str, dict[str, bytes]], fail_first: set[str]) -> None:
        self.files, self.fail_first = files, fail_first
        self.submitted: list[str] = []
        self.options: dict = {}

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict:
        return {"CPU": 2.0}

    def put(self, obj):
        return obj

    def remote(self, **options):
        self.options = options
        fake = self

        class Task:
            def remote(self, cfg_dict, name, data, tuned, threads, use_gpu):
                fake.submitted.append(name)
                return (name, fake.submitted.count(name))

        return lambda fn: Task()

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        name, attempt = ref
        if name in self.fail_first and (attempt == 1 or name == "eps1_seed1"):
            raise RuntimeError(f"worker died ({name}, attempt {attempt})")
        return self.files[name]


def test_ray_driver_retries_once_writes_files_and_reports(killed_and_resumed, sweep_cfg, tmp_path, monkeypatch):
    """The Ray driver loop with a fake ``ray``: same retry-once and reporting as the local loop."""
    import sys

    from robsal.experiments.sweep import CellStatus, RayExecutor, cell_complete, make_cells, sweep_config

    src = killed_and_resumed["out"]
    files = {n: {p.name: p.read_bytes() for p in (src / "models" / n).iterdir() if p.is_file()} for n in CELLS}
    fake = _FakeRay(files, fail_first={"eps0_seed1", "eps1_seed1"})  # eps1_seed1 fails every time
    monkeypatch.setitem(sys.modules, "ray", fake)
    cells = make_cells([0.0, 1.0], [0, 1])
    cfg = sweep_config(sweep_cfg, cells)
    out = tmp_path / "sw"
    out.mkdir()
    shutil.copy(src / "config.yaml", out / "config.yaml")
    statuses = {c.name: CellStatus(c.name, c.eps, c.seed) for c in cells}
    RayExecutor("auto", cpus=1.0, gpus=None, retries=1).train(cfg, out, None, cells, statuses, device=None,
                                                              progress=False)
    assert fake.options == {"num_cpus": 1.0, "num_gpus": 0.0, "max_retries": 0}
    assert sorted(fake.submitted) == sorted(CELLS + ["eps0_seed1", "eps1_seed1"])
    assert {n: (s.state, s.attempts) for n, s in statuses.items()} == {
        "eps0_seed0": ("trained", 1), "eps0_seed1": ("trained", 2),
        "eps1_seed0": ("trained", 1), "eps1_seed1": ("failed", 2),
    }
    assert statuses["eps1_seed1"].errors == [f"RuntimeError: worker died (eps1_seed1, attempt {k})" for k in (1, 2)]
    # the files returned by the tasks make complete cells in the sweep directory
    assert [cell_complete(cfg, out, c) for c in cells] == [True, True, True, False]
    assert (out / "models" / "eps0_seed1" / "model.safetensors").read_bytes() == files["eps0_seed1"]["model.safetensors"]
    recorded = json.loads((out / "sweep" / "cells.json").read_text())
    assert recorded["eps1_seed1"]["state"] == "failed"
