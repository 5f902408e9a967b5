import os
import subprocess
import sys

import pytest

from robsal.cli import main
from robsal.errors import ConfigError
from robsal.rundir import RunLock


def test_help_lists_the_main_job(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["run", "--config", "tiny", "--set", "data.image_size=4", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "data.image_size" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for an impossible config


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "robsal", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("robsal ")


def test_a_run_directory_in_use_is_refused(tmp_path):
    with RunLock(tmp_path):
        # flock is per open file description, so a second lock in this process conflicts too
        with pytest.raises(ConfigError, match="in use by PID"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


def test_evaluate_robustness_takes_run_as_option_or_positional(capsys):
    from robsal.cli import build_parser

    p = build_parser()
    assert p.parse_args(["evaluate-robustness", "--run", "R"]).run == "R"
    assert p.parse_args(["evaluate-robustness", "R"]).run_pos == "R"
    assert main(["evaluate-robustness"]) == 2
    assert "--run RUN" in capsys.readouterr().err


def test_report_of_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert main(["report", "--run", str(f)]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
    assert main(["report", "--run", str(tmp_path)]) == 2  # holds a file, but nothing of robsal's
    assert "not a robsal run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no report written into it


@pytest.mark.parametrize("below", [False, True])
@pytest.mark.parametrize("cmd", [["run", "--config", "tiny"], ["data", "synth", "--n", "3"]])
def test_out_naming_an_existing_file_is_one_line_and_exit_2(tmp_path, capsys, cmd, below):
    f = tmp_path / "taken"
    f.write_text("mine")
    assert main([*cmd, "--out", str(f / "sub" if below else f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "taken" in err and "Traceback" not in err
    assert f.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write anywhere")
def test_out_in_a_folder_without_write_permission_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["run", "--config", "tiny", "--out", str(ro / "run")]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("cmd", [["run", "--config", "tiny"], ["data", "synth", "--n", "3"]])
def test_out_on_a_read_only_file_system_is_one_line(small_fs, capsys, cmd):
    ro = small_fs("ro,size=1m")
    assert main([*cmd, "--out", str(ro / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read-only" in err and "Traceback" not in err
