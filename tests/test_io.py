import os

import numpy as np
import pytest

from robsal.io import append_jsonl, atomic_open, load_npz, read_json, save_npz, write_json


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write('{"v": 2, "half')
            raise RuntimeError("disk full")
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_npz_round_trip_without_pickle(tmp_path):
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    ids = np.array(["ISIC_0000001", "ISIC_0000002"])
    save_npz(tmp_path / "m.npz", maps=maps, image_ids=ids)
    back = load_npz(tmp_path / "m.npz")
    assert np.array_equal(back["maps"], maps) and back["image_ids"].tolist() == ids.tolist()
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(tmp_path / "obj.npz")


def test_append_jsonl(tmp_path):
    path = tmp_path / "h.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert os.stat(path).st_size > 0


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "p.json", {})
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "p.json").st_mode & 0o777) == 0o644
