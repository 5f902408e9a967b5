"""A run folder made by the previous release opens in `robsal report`; a record from an even
older version is one line naming the file and the command that rebuilds it."""

from __future__ import annotations

import json

import pytest

from robsal.errors import UserError


def test_the_previous_release_run_opens_in_robsal_report(old_run, capsys):
    from robsal.cli import main

    assert main(["report", "--run", str(old_run)]) == 0
    page = (old_run / "report.html").read_text(encoding="utf-8")
    assert "robust_eps4 recalls nv at 0.17 (&lt; 0.50)" in page  # the gate of summary.json
    assert "clean accuracy 44.4%" in page  # model.json metrics
    assert "e39a8410c8839968" not in page and "2026-12-03T20:52:57" in page  # stages.json: finished times
    assert "config_name: tiny; seed: 0; commit: dad5381a01636c83be6de5541accd84506e902f1" in page  # run.json


@pytest.mark.parametrize("rel, drop, fix", [
    ("models/standard/model.json", "metrics", "re-train it with `robsal train --config {run}/config.yaml --out {run} --models standard`"),
    ("metrics/summary.json", "gate", "re-run `robsal evaluate --run {run}`"),
    ("metrics/summary.json", "verdicts", "re-run `robsal evaluate --run {run}`"),
])
def test_a_record_from_an_older_version_is_one_line_naming_file_and_rebuild(old_run, capsys, rel, drop, fix):
    from robsal.cli import main
    from robsal.report.html import build_report

    path = old_run / rel
    doc = json.loads(path.read_text())
    del doc[drop]
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError) as exc:
        build_report(old_run)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path} lacks the key '{drop}'")
    assert "older robsal version" in msg and fix.format(run=old_run) in msg
    assert main(["report", "--run", str(old_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and fix.format(run=old_run) in err[0]
