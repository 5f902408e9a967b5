"""The stage runner and ledger: finished stages are skipped, a changed one reruns with every later one."""

from __future__ import annotations

import copy
import json

import pytest

from robsal.config import load_config
from robsal.rundir import Stage, clear_stage, fingerprint, init_run, is_done, mark_done, read_stages, run_stages


@pytest.fixture
def run(tmp_path):
    return init_run(load_config("tiny"), tmp_path / "run")


def _stages(calls):
    def step(name):
        return lambda cfg, run_dir, state: calls.append(name)

    return (
        Stage("data", "data", step("data")),
        Stage("tune", "tune", step("tune"), enabled=lambda cfg: cfg.tune.enabled),
        Stage("train", "train", step("train")),
        Stage("explain", "explain", step("explain")),
        Stage("evaluate", "evaluate", step("evaluate")),
    )


def test_the_runner_skips_done_stages_and_reruns_from_the_first_changed_one(run):
    cfg = load_config("tiny")
    calls: list[str] = []
    lines: list[str] = []
    run_stages(cfg, run, _stages(calls), {}, log=lines.append)
    assert calls == ["data", "train", "explain", "evaluate"]  # tune is disabled in tiny
    assert lines[0] == "[1/4] data ..." and lines[-1].startswith("[4/4] evaluate: done in ")
    ledger = read_stages(run)
    assert [ledger[s].fingerprint for s in ledger] == [fingerprint(cfg, s) for s in calls]
    calls.clear()
    run_stages(cfg, run, _stages(calls), {}, log=lines.append)
    assert calls == []
    changed = copy.deepcopy(cfg)
    changed.saliency.n_per_class += 1
    run_stages(changed, run, _stages(calls), {}, log=lines.append)
    assert calls == ["explain", "evaluate"]
    calls.clear()
    run_stages(changed, run, _stages(calls), {}, force=("train",), log=lines.append)
    assert calls == ["train", "explain", "evaluate"]  # forced, and every later stage with it


def test_a_failing_stage_records_nothing(run):
    cfg = load_config("tiny")

    def boom(cfg, run_dir, state):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stages(cfg, run, (Stage("data", "data", lambda *a: None), Stage("train", "train", boom)), {},
                   log=lambda s: None)
    assert is_done(run, "data", fingerprint(cfg, "data")) and not is_done(run, "train")


def test_ledger_helpers_write_the_records_as_before(run):
    mark_done(run, "data", seconds=1.5, fp="ab", cells=2)
    mark_done(run, "train")
    doc = json.loads((run / "stages.json").read_text())
    assert list(doc) == ["data", "train"]
    assert list(doc["data"]) == ["finished", "seconds", "fingerprint", "cells"] and doc["data"]["cells"] == 2
    assert doc["train"]["seconds"] is None and doc["train"]["fingerprint"] is None
    assert is_done(run, "data") and is_done(run, "data", "ab") and not is_done(run, "data", "cd")
    clear_stage(run, "data")
    assert list(read_stages(run)) == ["train"]
    (run / "stages.json").write_text("{not json")
    assert list(read_stages(run)) == []  # damaged: every stage reruns
