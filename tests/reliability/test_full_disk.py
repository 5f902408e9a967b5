"""A full disk while ``robsal data synth`` writes, on a real small file system (a 1 MiB tmpfs):
exit 2, one line naming the disk, no temporaries, and an earlier dataset in --out intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO, cli_env


def _synth(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robsal", "data", "synth", *args], capture_output=True, text=True,
                          env=cli_env(cache), cwd=REPO, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_while_generating_keeps_the_earlier_dataset(small_fs, tmp_path, capsys):
    from robsal.cli import main
    from robsal.data.synthetic import SynthSettings, generate

    mnt = small_fs("size=512k")
    ds = generate(mnt / "ds", SynthSettings(n=12, size=32), progress=False)  # about 140 KiB
    (ds / "notes.txt").write_text("mine")  # the user's own file beside the dataset
    before = _files(ds)
    assert len([f for f in before if f.startswith("images/")]) == 12

    # --force with a dataset that does not fit: the disk fills while the new images are written
    big = ["--n", "200", "--size", "64"]
    proc = _synth(["--out", str(ds), *big, "--force"], tmp_path / "cache")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("robsal: error: no space left on the device of ") and str(mnt) in line
    assert f"the earlier dataset in {ds} is intact" in line
    assert _files(ds) == before  # every file as it was, the user's too
    assert sorted(p.name for p in mnt.iterdir()) == ["ds"]  # no temporary folder left

    # a new --out on the full disk (the same command in this process): one line, nothing left behind
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(mnt / "new"), *big, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"nothing was written to {mnt / 'new'}" in err, err
    assert sorted(p.name for p in mnt.iterdir()) == ["ds"]
