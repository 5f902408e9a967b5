"""The run directory's records: load the previous release's files, rewrite them byte for byte,
and refuse damaged or older files with one line naming the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robsal.errors import CheckpointError, UserError
from robsal.rundir import (
    ModelRecord,
    RecordError,
    RunInfo,
    Selection,
    StageLedger,
    StageRecord,
    Summary,
)

from .conftest import OLD_RUN

RECORDS = {
    "models/standard/model.json": ModelRecord,
    "models/robust_eps4/model.json": ModelRecord,
    "metrics/summary.json": Summary,
    "stages.json": StageLedger,
    "saliency/selection.json": Selection,
    "run.json": RunInfo,
}


@pytest.mark.parametrize("rel", sorted(RECORDS))
def test_previous_release_records_are_rewritten_byte_for_byte(old_run, rel):
    path = old_run / rel
    before = path.read_bytes()
    RECORDS[rel].load(path).save(path)
    assert path.read_bytes() == before


def test_previous_release_records_load_with_their_values():
    std = ModelRecord.trained(OLD_RUN / "models" / "standard" / "model.json")
    assert std.arch == "resnet18" and std.classes == ["mel", "nv", "bkl"] and std.image_size == 32
    assert std.eps == 0.0 and std.adversary is None and std.fingerprint == "8986f88661493ea2" and std.epochs == 2
    assert std.metrics.clean_accuracy == pytest.approx(4 / 9)
    assert std.metrics.confusion_matrix == [[4, 0, 2], [2, 0, 4], [2, 0, 4]] and std.metrics.n_test == 18
    assert std.metrics.robust_accuracy == {"1": 0.25, "4": 0.0}
    assert std.metrics.strongest_robust() == ("4", 0.0)
    assert std.config["name"] == "tiny" and std.extra == {}
    rob = ModelRecord.load(OLD_RUN / "models" / "robust_eps4" / "model.json")
    assert rob.eps_l2 == pytest.approx(4 * 32 / 224) and rob.adversary["steps"] == 7

    s = Summary.load(OLD_RUN / "metrics" / "summary.json")
    assert s.standard == "standard" and s.n_images == 2 and s.comparable is False
    assert s.gate.comparable is False and s.gate.min_recall == 0.5 and s.gate.min_explained_per_class == 2
    assert s.gate.reasons[0] == "robust_eps4 recalls nv at 0.17 (< 0.50)" and len(s.gate.reasons) == 5
    assert s.gate.recall["standard"]["nv"] == 0.0
    assert s.models["standard"].clean_accuracy == pytest.approx(4 / 9) and s.models["robust_eps4"].eps == 4.0
    assert s.verdicts[0].claim == "sharper" and s.verdicts[0].verdict == "not comparable"
    assert s.headline("sharper").method == "gradient"
    assert s.explained_per_class == {"mel": 2, "nv": 0, "bkl": 0} and s.notes == []

    sel = Selection.load(OLD_RUN / "saliency" / "selection.json")
    assert (sel.rule, sel.n_per_class, sel.selected) == (Selection.CORRECT, 2, {"mel": 2, "nv": 0, "bkl": 0})
    assert sel.models == ["standard", "robust_eps4"]

    ledger = StageLedger.load(OLD_RUN / "stages.json")
    assert list(ledger) == ["data", "train", "explain", "evaluate", "report"]
    assert ledger["train"].fingerprint == "e39a8410c8839968" and ledger["train"].seconds == 8.66
    assert ledger.is_done("train", "e39a8410c8839968") and not ledger.is_done("train", "0" * 16)
    assert not ledger.is_done("tune")

    info = RunInfo.load(OLD_RUN / "run.json")
    assert (info.seed, info.config_name, info.commit[:7]) == (0, "tiny", "dad5381")


def test_a_record_made_in_code_writes_the_writers_key_order(tmp_path):
    rec = StageRecord(finished="2026-01-01T00:00:00", seconds=None, fingerprint="ab", extra={"cells": 3})
    assert list(rec.to_dict()) == ["finished", "seconds", "fingerprint", "cells"]
    assert rec.to_dict()["seconds"] is None  # written as null, as mark_done always has
    info = RunInfo(created="x")
    info.set(commit=None, seed=1, config_name="tiny")
    assert info.to_dict() == {"created": "x", "commit": None, "seed": 1, "config_name": "tiny"}


def test_unknown_keys_are_kept_and_new_fields_appended(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "finetune": {"groups": [5]}, "arch": "resnet18"}))
    rec = ModelRecord.load(path)
    assert rec.extra == {"finetune": {"groups": [5]}}
    rec.set(name="m", finetuned_from={"name": "s"})
    rec.save(path)
    assert list(json.loads(path.read_text())) == ["classes", "finetune", "arch", "name", "finetuned_from"]


def _edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _set(keys, value):
    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


CASES = [
    # (file, edit, record, words the one line must hold)
    ("models/standard/model.json", _set(["eps"], "4"), ModelRecord, ["eps must be a number >= 0"]),
    ("models/standard/model.json", _set(["classes"], ["mel"]), ModelRecord, ["classes must be a list of at least two"]),
    ("models/standard/model.json", _set(["image_size"], 0), ModelRecord, ["image_size must be a whole number of pixels"]),
    ("models/standard/model.json", _set(["std"], [1, 0, 1]), ModelRecord, ["std must be a list of 3 numbers > 0"]),
    ("models/standard/model.json", _set(["seed"], "0"), ModelRecord, ["seed must be a whole number or null"]),
    ("models/standard/model.json", _set(["metrics", "clean_accuracy"], "0.5"), ModelRecord,
     ["metrics.clean_accuracy must be a number"]),
    ("models/standard/model.json", _set(["metrics", "confusion_matrix"], [[1, "x"]]), ModelRecord,
     ["metrics.confusion_matrix must be a list of rows of numbers"]),
    ("models/standard/model.json", _set(["metrics"], [1, 2]), ModelRecord, ["metrics must hold a JSON object"]),
    ("metrics/summary.json", _set(["gate", "comparable"], "no"), Summary, ["gate.comparable must be true or false"]),
    ("metrics/summary.json", _set(["verdicts"], {"a": 1}), Summary, ["verdicts must be a list"]),
    ("metrics/summary.json", _set(["verdicts", 0, "line"], 3), Summary, ["verdicts[0].line must be a string"]),
    ("metrics/summary.json", _set(["models", "standard", "eps"], "0"), Summary, ["models.standard.eps must be a number"]),
    ("metrics/summary.json", _set(["gate"], None), Summary, ["gate must not be null"]),
    ("saliency/selection.json", _set(["selected", "mel"], "2"), Selection, ["selected must be an object of whole"]),
    ("stages.json", _set(["train", "seconds"], "8"), StageLedger, ["train.seconds must be a number"]),
    ("stages.json", _set(["train"], 3), StageLedger, ["train must hold a JSON object"]),
    ("run.json", _set(["seed"], "0"), RunInfo, ["seed must be a whole number"]),
]
FIXES = {
    ModelRecord: "re-train it with `robsal train --config {run}/config.yaml --out {run} --models standard`",
    Summary: "re-run `robsal evaluate --run {run}`",
    Selection: "re-run `robsal explain --run {run}`",
    StageLedger: "delete it to re-run every stage",
    RunInfo: "`robsal run` writes it again",
}


@pytest.mark.parametrize("rel, edit, record, words", CASES, ids=[f"{c[0]}:{c[3][0].split()[0]}" for c in CASES])
def test_a_damaged_field_is_one_line_naming_file_field_and_fix(old_run, rel, edit, record, words):
    path = old_run / rel
    _edit(path, edit)
    with pytest.raises(RecordError) as exc:
        record.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for w in [*words, FIXES[record].format(run=old_run)]:
        assert w in msg
    if record is ModelRecord:
        assert isinstance(exc.value, CheckpointError)  # what robsal.models.load has always raised


def test_files_from_an_older_version_name_the_missing_key_and_how_to_rebuild(old_run):
    model = old_run / "models" / "standard" / "model.json"
    _edit(model, lambda d: d.pop("metrics"))
    ModelRecord.load(model)  # a model directory needs no metrics to load ...
    with pytest.raises(RecordError) as exc:  # ... a run's results do
        ModelRecord.trained(model)
    assert str(exc.value) == (
        f"{model} lacks the key 'metrics' (it is from an older robsal version or its training did not finish); "
        f"re-train it with `robsal train --config {old_run}/config.yaml --out {old_run} --models standard` or restore it"
    )
    summary = old_run / "metrics" / "summary.json"
    _edit(summary, lambda d: d.pop("gate"))
    with pytest.raises(RecordError) as exc:
        Summary.load(summary)
    assert str(exc.value) == (
        f"{summary} lacks the key 'gate' (it is from an older robsal version or damaged); "
        f"re-run `robsal evaluate --run {old_run}`"
    )
    sel = old_run / "saliency" / "selection.json"
    _edit(sel, lambda d: d.pop("selected"))
    with pytest.raises(RecordError, match=r"lacks the key 'selected'.*re-run `robsal explain --run "):
        Selection.load(sel)


@pytest.mark.parametrize("rel", sorted(RECORDS))
def test_truncated_or_non_object_files_are_one_line_errors(old_run, rel):
    path = old_run / rel
    path.write_text('{"arch": ', encoding="utf-8")
    with pytest.raises(UserError, match=r"is not valid JSON \(line 1: Expecting value\)"):
        RECORDS[rel].load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UserError, match="must hold a JSON object, not a list") as exc:
        RECORDS[rel].load(path)
    assert "\n" not in str(exc.value)


def test_a_key_with_a_newline_is_quoted_on_one_line(tmp_path):
    """Keys of a damaged file appear in the message; a control character in one is escaped
    (found by the property test on random records: ``{"\\n": null}`` as stages.json)."""
    from robsal.rundir import RecordError, StageLedger

    path = tmp_path / "stages.json"
    path.write_text('{"\\n\\u0007x": null}\n')
    with pytest.raises(RecordError) as info:
        StageLedger.load(path)
    msg = str(info.value)
    assert "\n" not in msg and "\\n\\x07x" in msg and "must hold a JSON object, not null" in msg
