import os
import subprocess
import sys
import time
import types

import pytest
import torch

from robsal import threads
from robsal.cli import build_parser, main
from robsal.config import load_config
from robsal.errors import ConfigError


def _policy_after(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != threads.WAIT_POLICY}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                         capture_output=True, text=True, check=True, env=clean)
    return out.stdout.strip()


def test_importing_robsal_first_on_a_busy_machine_sets_a_passive_wait_policy():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert _policy_after("import robsal") == "PASSIVE"
    finally:
        hog.kill()
        hog.wait()


def test_wait_policy_follows_the_load_only_when_nobody_chose(monkeypatch):
    monkeypatch.setattr(threads, "sys", types.SimpleNamespace(modules={}))  # as if torch were not loaded yet
    monkeypatch.delenv(threads.WAIT_POLICY, raising=False)
    assert threads.configure_wait_policy(busy=0.1) is None  # idle: the runtime's default (spinning is faster)
    assert threads.configure_wait_policy(busy=1.0) == "PASSIVE"
    monkeypatch.setenv(threads.WAIT_POLICY, "ACTIVE")
    assert threads.configure_wait_policy(busy=2.0) == "ACTIVE"


def test_busy_cpus_sees_a_busy_process():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cpus(0.3) >= 0.7
    finally:
        hog.kill()
        hog.wait()


def test_a_policy_the_user_set_is_kept():
    assert _policy_after("import robsal", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_no_policy_is_set_once_torch_is_loaded():
    # OpenMP reads the variable when torch loads it: setting it later would only mislead
    assert _policy_after("import torch, robsal") == "None"


def test_default_threads_is_the_affinity_share_of_each_local_process(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "torch_default_threads", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(threads, "torch_default_threads", lambda: 4)  # 4 physical cores, 8 hyper-threads
    assert threads.default_threads() == 4


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_process_pinned_to_one_cpu_gets_one_thread():
    cpu = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); from robsal import threads; "
            "print(threads.available_cpus(), threads.set_threads(None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k not in (threads.THREADS_ENV, "LOCAL_WORLD_SIZE")})
    assert out.stdout.split() == ["1", "1"]


def test_set_threads_order_of_precedence(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(threads.THREADS_ENV, "1")
        assert threads.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert threads.set_threads(2) == 2 and torch.get_num_threads() == 2  # an explicit count wins
        monkeypatch.setenv(threads.THREADS_ENV, "two")
        with pytest.raises(ConfigError, match="ROBSAL_THREADS"):
            threads.set_threads(None)
        monkeypatch.setenv(threads.THREADS_ENV, "0")
        with pytest.raises(ConfigError, match=">= 1"):
            threads.set_threads(None)
    finally:
        torch.set_num_threads(before)


def test_every_command_takes_threads():
    parser = build_parser()
    for argv in (["run"], ["train", "--out", "x"], ["report", "--run", "x"], ["data", "check", "--data", "x"]):
        assert parser.parse_args([*argv, "--threads", "1"]).threads == 1


def test_bad_threads_flag_and_config_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", "tiny", "--threads", "0", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="threads"):
        load_config("tiny", ["threads=0"])
    assert not (tmp_path / "r").exists()


def test_threads_does_not_change_what_a_run_was_made_with(tmp_path):
    from robsal.rundir import init_run

    init_run(load_config("tiny"), tmp_path)
    init_run(load_config("tiny", ["threads=1"]), tmp_path)  # speed, not results: accepted
