import subprocess
import sys

import pytest

from robsal.cli import main
from robsal.errors import ConfigError
from robsal.runs import RunLock


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
