"""The one fingerprint table: every entry gives the string robsal wrote before the table
existed (existing run folders resume), and the one completeness check of a trained model."""

from __future__ import annotations

import json
import shutil

import pytest

from robsal.config import load_config
from robsal.rundir import SECTIONS, fingerprint, is_complete

from .conftest import OLD_RUN

CELLS = ["eps0_seed0", "eps0_seed1", "eps4_seed0", "eps4_seed1"]

# Values computed with the code before robsal.rundir (runs.fingerprint, training_fingerprint,
# cv._cell_fingerprint, finetune_fingerprint, sweep._stage_fp, the synthetic cache hash) for
# the tiny preset; the main-job ones are also in tests/rundir/data/tiny_old/stages.json.
PINNED = {
    "data": "2606bd23a2afabb3",
    "tune": "7651018e5de711c2",
    "train": "e39a8410c8839968",
    "explain": "604e49873e5ec1b9",
    "evaluate": "947742a2c435d2f5",
    "report": "947742a2c435d2f5",
    "training": {"standard": "8986f88661493ea2", "robust_eps4": "d44090910c8c2e78"},
    "cv_cell": {"phase1": "0baffb8e55c9c8d1", "cell": "8c4ce6850b818e60"},
    "finetune": "dc9d124ff2021c3e",
    "sweep_tune": "7651018e5de711c2",
    "sweep_explain": "7f2d9e171bbe4828",
    "sweep_evaluate": "51f16349b76c572e",
    "data_cache": "c681dc2e537c6f83",
    "control_rate": "71e5a7b708166a81",
}


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="module")
def sweep_cfg(cfg):
    from robsal.experiments.sweep import make_cells, sweep_config

    return sweep_config(cfg, make_cells([0.0, 4.0], [0, 1]))


def test_every_entry_is_pinned():
    assert set(PINNED) == set(SECTIONS)


@pytest.mark.parametrize("stage", ["data", "tune", "train", "explain", "evaluate", "report"])
def test_main_job_stages_keep_their_fingerprints(cfg, stage):
    assert fingerprint(cfg, stage) == PINNED[stage]
    stages = json.loads((OLD_RUN / "stages.json").read_text())
    if stage in stages:  # what the previous release recorded in a real run
        assert stages[stage]["fingerprint"] == PINNED[stage]


def test_main_job_entries_cover_every_earlier_stage():
    from robsal.experiments.run import STAGES

    names = [s.name for s in STAGES]
    assert names == ["data", "tune", "train", "explain", "evaluate", "report"]
    for earlier, later in zip(names, names[1:]):
        assert set(SECTIONS[earlier]) <= set(SECTIONS[later]), (earlier, later)


def test_a_changed_section_changes_exactly_the_stages_that_read_it(cfg):
    import copy

    changed = copy.deepcopy(cfg)
    changed.saliency.n_per_class += 1
    same = [s for s in ("data", "tune", "train", "explain", "evaluate") if fingerprint(changed, s) == PINNED[s]]
    assert same == ["data", "tune", "train"]


def test_training_cv_and_finetune_fingerprints(cfg):
    from robsal.experiments.finetune import FinetuneSettings, finetune_fingerprint
    from robsal.training.train import training_fingerprint

    for spec in cfg.models:
        assert training_fingerprint(cfg, spec) == PINNED["training"][spec.name]
        assert fingerprint(cfg, "training", spec={"name": spec.name, "eps": spec.eps, "seed": spec.seed}) \
            == PINNED["training"][spec.name]
    assert (OLD_RUN / "models" / "standard" / "model.json").read_text().count(PINNED["training"]["standard"]) == 1
    assert fingerprint(cfg, "cv_cell", cell={"fold": 0, "phase": "phase1"}) == PINNED["cv_cell"]["phase1"]
    assert fingerprint(cfg, "cv_cell", cell={"fold": 1, "lr": 0.001, "batch_size": 8}) == PINNED["cv_cell"]["cell"]
    from dataclasses import asdict

    settings = FinetuneSettings()
    named = {"source": "0123456789abcdef", "groups": [4, 5], "settings": asdict(settings)}
    assert fingerprint(cfg, "finetune", **named) == PINNED["finetune"]
    assert finetune_fingerprint(cfg, "0123456789abcdef", [4, 5], settings) == PINNED["finetune"]


def test_sweep_fingerprints(sweep_cfg):
    assert fingerprint(sweep_cfg, "sweep_tune") == PINNED["sweep_tune"]
    assert fingerprint(sweep_cfg, "sweep_explain", CELLS, "correct") == PINNED["sweep_explain"]
    assert fingerprint(sweep_cfg, "sweep_evaluate", CELLS, "all") == PINNED["sweep_evaluate"]
    assert fingerprint(sweep_cfg, "sweep_explain", CELLS, "all") != PINNED["sweep_explain"]


def test_data_cache_fingerprint(cfg):
    from robsal.data import synthetic

    settings = synthetic.SynthSettings.from_config(cfg.data.synth)
    fp = fingerprint(cfg, "data_cache", version=synthetic.SYNTH_VERSION, settings=settings.to_dict())
    assert fp == PINNED["data_cache"]


def test_control_rate_covers_every_section_but_device_and_threads(cfg):
    every = tuple(k for k in cfg.to_dict() if k not in ("device", "threads"))
    assert set(SECTIONS["control_rate"]) == set(every)  # a new config section must join it
    assert fingerprint(cfg, "control_rate") == PINNED["control_rate"]


def test_unknown_entry_and_clashing_inputs_are_refused(cfg):
    with pytest.raises(KeyError, match="declare it in SECTIONS"):
        fingerprint(cfg, "explian")
    with pytest.raises(ValueError, match="clash"):
        fingerprint(cfg, "training", data=1)
    assert fingerprint(cfg, ("data",)) == PINNED["data"]  # a tuple of sections, for a one-off


def test_is_complete(tmp_path):
    d = tmp_path / "standard"
    d.mkdir()
    fp = PINNED["training"]["standard"]
    assert not is_complete(d, fp)
    shutil.copy(OLD_RUN / "models" / "standard" / "model.json", d / "model.json")
    assert not is_complete(d, fp)  # no weights
    (d / "model.safetensors").write_bytes(b"x")
    assert is_complete(d, fp)
    assert not is_complete(d, "0" * 16)  # another config
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "metrics"}))
    assert not is_complete(d, fp)  # not evaluated: training did not finish
    (d / "model.json").write_text('{"arch": ')
    assert not is_complete(d, fp)  # damaged: trained again
    (d / "model.json").write_text(json.dumps({**meta, "eps": "zero"}))
    assert not is_complete(d, fp)
