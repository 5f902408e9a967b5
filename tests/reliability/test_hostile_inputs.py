"""Files from elsewhere must not run code or reach outside the dataset; every refusal is one line, exit 2."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import torch

from robsal.cli import main
from robsal.data.folder import read_folder
from robsal.data.index import INDEX_COLUMNS, DatasetIndex
from robsal.data.pipeline import check_contained
from robsal.errors import CheckpointError, DataError
from robsal.models import build_model, load, save

from ..data.conftest import lesion_table, write_ham


class Evil:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_files(tmp_path):
    marker = tmp_path / "pwned"
    files = {
        "legacy.pth": lambda p: p.write_bytes(pickle.dumps({"conv1.weight": Evil(marker)}, protocol=2)),
        "zip.pth": lambda p: torch.save({"conv1.weight": Evil(marker)}, p),
        "pickle.safetensors": lambda p: p.write_bytes(pickle.dumps({"conv1.weight": Evil(marker)}, protocol=2)),
    }
    for name, make in files.items():
        make(tmp_path / name)
    return marker, [tmp_path / n for n in files]


def test_the_payload_is_live(evil_files):
    """Guard against a test that cannot fail: plain unpickling does run the payload."""
    marker, paths = evil_files
    pickle.loads(paths[0].read_bytes())["conv1.weight"].close()
    assert marker.exists()


def test_malicious_pickles_as_pretrained_weights_are_refused_unexecuted(evil_files):
    marker, paths = evil_files
    for path in paths:
        with pytest.raises(CheckpointError) as e:
            build_model("resnet18", ["a", "b"], pretrained_path=path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "refusing to load" in msg
    assert not marker.exists()


def test_malicious_pickle_as_a_model_file_is_refused_unexecuted(evil_files, tmp_path):
    marker, paths = evil_files
    model_dir = tmp_path / "model"
    save(build_model("resnet18", ["a", "b"], image_size=32), model_dir)
    (model_dir / "model.safetensors").write_bytes(paths[0].read_bytes())
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(model_dir)
    assert not marker.exists()


def test_cli_refuses_a_malicious_pretrained_file(evil_files, tmp_path, capsys):
    marker, paths = evil_files
    rc = main(["train", "--config", "tiny", "--set", "device=cpu", "--pretrained", str(paths[1]),
               "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("robsal: error: refusing to load") and str(paths[1]) in err
    assert not marker.exists()


def test_yaml_config_cannot_build_python_objects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "not valid YAML" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", "..\\..\\x", "ok/../../../etc/passwd"])
def test_csv_image_id_leaving_the_dataset_is_refused_by_the_cli(tmp_path, capsys, monkeypatch, bad_id):
    monkeypatch.setenv("ROBSAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ham"
    write_ham(root, lesion_table({"mel": [1, 1], "nv": [1, 1], "bkl": [1, 1]}))
    md = root / "HAM10000_metadata.csv"
    md.write_text(md.read_text() + f"HAM_9,{bad_id},mel,histo,50,male,back\n")  # row 8
    rc = main(["train", "--config", "tiny", "--set", "device=cpu", "--data", str(root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err.startswith("robsal: error: HAM10000_metadata.csv row 8: image_id") and repr(bad_id) in err
    assert "outside the dataset folder" in err
    assert not (tmp_path / "run" / "splits.csv").exists()


def test_index_paths_outside_the_root_are_refused_before_any_file_is_opened(tmp_path):
    root = tmp_path / "data"
    (root / "mel").mkdir(parents=True)
    inside = root / "mel" / "a.png"
    inside.write_bytes(b"")
    rows = [{"image_id": "a", "lesion_id": "a", "label": "mel", "path": str(inside)},
            {"image_id": "b", "lesion_id": "b", "label": "mel", "path": str(root / "mel" / ".." / ".." / "secret.png")}]
    index = DatasetIndex(root, "ham10000", pd.DataFrame(rows, columns=INDEX_COLUMNS))
    with pytest.raises(DataError, match=r"^image b: path .*secret\.png lies outside the dataset folder"):
        check_contained(index)
    check_contained(index, index.table.iloc[:1])  # the inside row alone passes
    # folder layout: masks may live in the sibling <root>_masks folder, nowhere else
    (tmp_path / "data_masks" / "mel").mkdir(parents=True)
    mask = tmp_path / "data_masks" / "mel" / "a.png"
    ok = DatasetIndex(root, "folder", pd.DataFrame([{**rows[0], "mask_path": str(mask)}], columns=INDEX_COLUMNS))
    check_contained(ok)
    bad = DatasetIndex(root, "ham10000", ok.table)
    with pytest.raises(DataError, match="image a: mask_path"):
        check_contained(bad)


def test_folder_mask_linking_outside_is_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "xray"
    for cls in ("normal", "sick"):
        (root / cls).mkdir(parents=True)
        (tmp_path / "xray_masks" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / cls / f"{cls}1.png")
    secret = tmp_path / "secret.png"
    Image.new("L", (8, 8)).save(secret)
    (tmp_path / "xray_masks" / "sick" / "sick1.png").symlink_to(secret)
    with pytest.raises(DataError, match="sick1.png: mask links outside the mask folder"):
        read_folder(root)


@contextlib.contextmanager
def _locked_by_another_process(run, pid):
    """Another process holds RUN/.lock (with ``pid`` written in it) while the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"f = open({str(run / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('{pid}'); f.flush()\n"
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_run_directory_locked_by_another_process_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBSAL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    with _locked_by_another_process(run, 4242):
        rc = main(["train", "--config", "tiny", "--set", "device=cpu", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "in use by PID 4242" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # locked before writing: no config, data or splits
    assert not (run / "models").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_where_an_image_or_mask_is_expected_is_refused_without_blocking(tmp_path):
    from robsal.data.cache import load_image, load_mask
    from robsal.errors import DataError

    fifo = tmp_path / "img.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_image(fifo, 8)
    with pytest.raises(DataError, match="not a regular file"):
        load_mask(fifo, 8, (8, 8))


def test_a_device_or_huge_file_as_config_is_refused_before_reading(tmp_path):
    from robsal.config import MAX_CONFIG_BYTES, load_config
    from robsal.errors import ConfigError

    if os.path.exists("/dev/zero"):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="more than"):
        load_config(str(big))
    base = tmp_path / "base.yaml"
    base.write_text("base: /dev/zero\n")
    if os.path.exists("/dev/zero"):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(str(base))


@pytest.mark.parametrize("cmd", [["explain", "--run"], ["evaluate", "--run"], ["report", "--run"],
                                 ["evaluate-robustness", "--run"]])
def test_every_command_writing_into_a_run_takes_its_lock(tmp_path, capsys, cmd):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("base: tiny\n")
    with _locked_by_another_process(run, 4243):
        rc = main([*cmd, str(run)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "in use by PID 4243" in err, err
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]  # nothing written
