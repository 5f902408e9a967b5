"""HAM10000 and folder loaders, and every bad input of the issue (one-line DataError, exit 2)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from robsal.cli import main
from robsal.config import load_config
from robsal.data.check import check_dataset
from robsal.data.folder import read_folder
from robsal.data.ham10000 import read_ham10000
from robsal.data.pipeline import detect_layout, prepare
from robsal.errors import DataError

from .conftest import lesion_table, write_ham


def ham_cfg(root, **data):
    sets = ["data.source=ham10000", f"data.root={root}", "data.image_size=16", "data.n_folds=2",
            "data.train_per_class=4", "data.test_per_class=4", "data.val_per_class=1", "device=cpu"]
    sets += [f"data.{k}={v}" for k, v in data.items()]
    return load_config("tiny", sets)


def test_reads_ham10000_parts_in_either_case_with_masks(ham_dir):
    idx = read_ham10000(ham_dir)
    t = idx.table
    assert len(t) == 27 and idx.layout == "ham10000"
    assert {os.path.basename(os.path.dirname(p)) for p in t["path"]} == {
        "HAM10000_images_part_1", "ham10000_images_PART_2"}
    assert t["mask_path"].notna().sum() == 14  # every second image, "_Segmentation.png"
    assert t.groupby("lesion_id").size().max() == 3
    assert sorted(t["label"].unique()) == ["bkl", "mel", "nv"]
    assert detect_layout(ham_dir) == "ham10000"


def test_prepare_end_to_end_on_ham_layout(ham_dir, tmp_path):
    data = prepare(ham_cfg(ham_dir), tmp_path / "run", progress=False)
    assert data.images.shape == (3 * 8, 3, 16, 16) and data.images.dtype == np.uint8
    assert (tmp_path / "run" / "splits.csv").exists()
    # row order of the arrays follows splits.csv; the red channel encodes the image index
    ids = read_ham10000(ham_dir).table["image_id"].tolist()
    for row, iid in enumerate(data.image_ids):
        assert abs(int(data.images[row, 0, 8, 8]) - (ids.index(iid) * 7) % 256) <= 3
    # the mask (central third of a 60x45 image) survives crop 45x45 + resize: a central block
    m = data.masks[data.has_mask]
    assert m.shape[0] >= 1 and set(np.unique(m)) <= {0, 1}
    assert m[:, 8, 8].all() and not m[:, 0, 0].any()
    assert (data.masks[~data.has_mask] == 0).all()


def test_folder_layout_with_sibling_masks(tmp_path):
    root = tmp_path / "xray"
    for cls, n in (("normal", 5), ("pneumonia", 6)):
        (root / cls).mkdir(parents=True)
        (tmp_path / "xray_masks" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 20, 3), 10 * i, np.uint8)).save(root / cls / f"{cls}{i}.png")
        Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / "xray_masks" / cls / f"{cls}0.png")
    idx = read_folder(root)
    assert detect_layout(root) == "folder"
    assert idx.table.groupby("label").size().to_dict() == {"normal": 5, "pneumonia": 6}
    assert idx.table["mask_path"].notna().sum() == 2
    assert (idx.table["lesion_id"] == idx.table["image_id"]).all()
    cfg = load_config("tiny", [f"data.root={root}", "data.source=auto", "data.classes=[normal, pneumonia]",
                               "data.image_size=16", "data.train_per_class=2", "data.test_per_class=3",
                               "data.val_per_class=1", "data.n_folds=2"])
    data = prepare(cfg, tmp_path / "run", progress=False)
    assert len(data) == 10 and data.has_mask.sum() <= 2 and data.classes == ["normal", "pneumonia"]


# ----------------------------------------------------------------------------- bad inputs


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_metadata_column(tmp_path):
    root = tmp_path / "ham"
    write_ham(root, lesion_table({"mel": [1]}), header=("lesion_id", "image_id", "dx_type", "dx_wrong"))
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx_type\nHAM_1,ISIC_1000000,histo\n")
    with pytest.raises(DataError) as e:
        prepare(ham_cfg(root), None, progress=False)
    msg = _one_line(e)
    assert "HAM10000_metadata.csv" in msg and "missing column(s) dx" in msg


def test_missing_image_names_the_row(ham_dir):
    next(ham_dir.rglob("ISIC_1000004.jpg")).unlink()
    with pytest.raises(DataError) as e:
        read_ham10000(ham_dir)
    msg = _one_line(e)
    assert "row 6" in msg and "ISIC_1000004" in msg and "add the image or remove the row" in msg


def test_corrupt_jpeg_names_the_file(ham_dir, tmp_path):
    bad = next(ham_dir.rglob("ISIC_1000003.jpg"))
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError) as e:
        prepare(ham_cfg(ham_dir, train_per_class=5, test_per_class=4), tmp_path / "run", progress=False)
    msg = _one_line(e)
    assert "ISIC_1000003.jpg" in msg and "cannot read image" in msg


def test_mask_of_the_wrong_size(ham_dir, tmp_path):
    mask = next(ham_dir.rglob("ISIC_1000000_Segmentation.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    with pytest.raises(DataError) as e:
        prepare(ham_cfg(ham_dir, train_per_class=5, test_per_class=4), tmp_path / "run", progress=False)
    msg = _one_line(e)
    assert "ISIC_1000000_Segmentation.png" in msg and "10x10" in msg and "60x45" in msg


def test_unknown_class_name(ham_dir, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(ham_cfg(ham_dir, classes="[mel, nv, melanoma]"), tmp_path / "run", progress=False)
    msg = _one_line(e)
    assert "'melanoma'" in msg and "bkl, mel, nv" in msg and "data.classes" in msg


def test_too_few_images_for_the_balance(ham_dir, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(ham_cfg(ham_dir, train_per_class=8), tmp_path / "run", progress=False)
    msg = _one_line(e)
    assert "class 'mel' has 9 images" in msg and "needs 12" in msg and "train_per_class" in msg


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", "..", "sub/ISIC_1"])
def test_image_id_outside_the_dataset_folder(ham_dir, bad_id):
    md = ham_dir / "HAM10000_metadata.csv"
    md.write_text(md.read_text() + f"HAM_9,{bad_id},mel,histo,50,male,back\n")
    with pytest.raises(DataError) as e:
        read_ham10000(ham_dir)
    msg = _one_line(e)
    assert "row 29" in msg and "outside the dataset folder" in msg


def test_symlink_leaving_the_dataset_folder_is_refused(ham_dir, tmp_path):
    secret = tmp_path / "secret.jpg"
    target = next(ham_dir.rglob("ISIC_1000001.jpg"))
    secret.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(DataError, match="links outside the dataset folder"):
        read_ham10000(ham_dir)


def test_data_check_lists_every_problem_at_once(ham_dir):
    next(ham_dir.rglob("ISIC_1000004.jpg")).unlink()  # missing image
    bad = next(ham_dir.rglob("ISIC_1000003.jpg"))
    bad.write_bytes(b"not a jpeg")  # corrupt image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(next(ham_dir.rglob("ISIC_1000000_Segmentation.png")))
    md = ham_dir / "HAM10000_metadata.csv"
    md.write_text(md.read_text() + "HAM_9,../x,mel,histo,50,male,back\n")
    report = check_dataset(ham_dir)
    text = "\n".join(report.problems)
    assert len(report.problems) == 4, text
    for part in ("ISIC_1000004", "ISIC_1000003.jpg", "ISIC_1000000_Segmentation.png", "'../x'"):
        assert part in text
    assert report.counts.loc["mel", "images"] == 7  # two mel images unusable
    assert report.counts.loc["nv", "lesions"] == 6


def test_data_check_refuses_the_masks_and_files_training_refuses(ham_dir):
    """data check decodes as training does: a mask of values {0, 7} and a FIFO as mask are problems."""
    masks = sorted(ham_dir.rglob("*_Segmentation.png"))
    a = np.asarray(Image.open(masks[0])).copy()
    a[a > 0] = 7
    Image.fromarray(a).save(masks[0])
    masks[1].unlink()
    os.mkfifo(masks[1])
    text = "\n".join(check_dataset(ham_dir).problems)
    assert f"{masks[0]}: mask values are {{0, 7}}" in text
    assert f"mask {masks[1]} is not a regular file" in text


def test_cli_bad_input_is_one_line_exit_2(ham_dir, tmp_path, capsys):
    next(ham_dir.rglob("ISIC_1000004.jpg")).unlink()
    rc = main(["data", "check", "--data", str(ham_dir)])
    out = capsys.readouterr()
    assert rc == 2 and "problems (1):" in out.out and "ISIC_1000004" in out.out
    assert "Traceback" not in out.err + out.out
    rc = main(["data", "check", "--data", str(tmp_path / "nowhere")])
    out = capsys.readouterr()
    assert rc == 2 and "does not exist" in out.out
    rc = main(["data", "check", "--data", str(ham_dir), "-c", "tiny", "--set", "data.classes=[mel, xyz]",
               "--set", "data.image_size=16"])
    out = capsys.readouterr()
    assert rc == 2 and "'xyz'" in out.out


def test_cli_synth_then_check(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "30", "--size", "32", "--seed", "1"]) == 0
    assert main(["data", "check", "--data", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.split()[:1] in (["mel"], ["nv"], ["bkl"])}
    assert counts == {"mel": 10, "nv": 10, "bkl": 10}
    rc = main(["data", "synth", "--out", str(tmp_path / "s2"), "--n", "30", "--hair-rate", "1.5"])
    assert rc == 2 and "data.synth.hair_rate" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


def test_class_folders_differing_only_in_case_are_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from robsal.data.folder import read_folder
    from robsal.errors import DataError

    for c in ("Mel", "mel", "nv"):
        (tmp_path / c).mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / c / f"{c}_x.png")
    try:
        read_folder(tmp_path)
    except DataError as exc:
        assert "'Mel/' and 'mel/' differ only in case" in str(exc) and "\n" not in str(exc)
    else:  # a case-insensitive file system cannot hold both folders
        import pytest

        pytest.skip("this file system does not distinguish the folders' case")
