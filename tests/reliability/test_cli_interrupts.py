"""`robsal train` killed, terminated or interrupted mid-run (real subprocesses), then resumed.

Four processes start together: an uninterrupted reference run, one killed with SIGKILL,
one sent SIGTERM and one sent SIGINT, each signal sent as soon as the first epoch
checkpoint exists (the process is then training the next epoch). The killed run is
resumed with the same command and must end with bit-identical weights. All use one
thread (OMP_NUM_THREADS=1), as a user comparing runs would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robsal.models import build_model
from robsal.training.checkpoint import LATEST, read_checkpoint, restore_model

from .conftest import cli_env, start_cli

MODEL = "standard"  # exact resume of adversarial training (PGD noise) is tested in-process

pytestmark = pytest.mark.slow


def train_args(out: Path) -> list[str]:
    return ["train", "--config", "tiny", "--set", "device=cpu", "--set", "train.phase2.epochs=3",
            "--set", "robustness.eps=[1]", "--models", MODEL, "--out", str(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start all four runs; signal each once its first checkpoint exists; resume the killed one."""
    base = tmp_path_factory.mktemp("interrupts")
    plan = {"reference": None, "killed": signal.SIGKILL, "terminated": signal.SIGTERM, "interrupted": signal.SIGINT}
    procs = {name: start_cli(train_args(base / name), base / f"cache_{name}", base / f"{name}.log") for name in plan}
    sent: dict[str, bool] = {}
    todo = {n for n, sig in plan.items() if sig is not None}
    deadline = time.monotonic() + 300
    while todo and time.monotonic() < deadline:
        for name in sorted(todo):
            if (base / name / "models" / MODEL / "checkpoint" / LATEST).exists() or procs[name].poll() is not None:
                sent[name] = procs[name].poll() is None  # False: it ended before a checkpoint was seen
                if sent[name]:
                    procs[name].send_signal(plan[name])
                todo.discard(name)
        time.sleep(0.02)
    codes = {"killed": procs["killed"].wait(timeout=300)}
    killed_dir = base / "killed" / "models" / MODEL
    after_kill = {  # what the kill left behind, before the resume changes it
        "model_written": (killed_dir / "model.safetensors").exists(),
        "checkpoint_epoch": read_checkpoint(killed_dir / "checkpoint" / LATEST).epoch,
    }
    resumed = subprocess.run(  # the same command again, while the others still run
        [sys.executable, "-m", "robsal", *train_args(base / "killed")],
        capture_output=True, text=True, env=cli_env(base / "cache_killed"), timeout=300,
    )
    codes.update({name: p.wait(timeout=300) for name, p in procs.items()})
    logs = {name: (base / f"{name}.log").read_text() for name in plan}
    return base, codes, logs, sent, after_kill, resumed


def test_sigkill_mid_training_then_resume_gives_bit_identical_weights(runs):
    base, codes, logs, sent, after_kill, resumed = runs
    assert codes["reference"] == 0, logs["reference"]
    assert sent["killed"] and codes["killed"] == -signal.SIGKILL, logs["killed"]
    assert not after_kill["model_written"] and after_kill["checkpoint_epoch"] >= 1  # died mid-training
    assert resumed.returncode == 0, resumed.stderr
    assert f"{MODEL}: resuming after epoch {after_kill['checkpoint_epoch']}" in resumed.stdout
    killed_dir = base / "killed" / "models" / MODEL
    ref = load_file(str(base / "reference" / "models" / MODEL / "model.safetensors"))
    res = load_file(str(killed_dir / "model.safetensors"))
    assert ref.keys() == res.keys() and len(ref) > 100
    for k in ref:
        assert torch.equal(ref[k], res[k]), k
    # the history is the uninterrupted one (same losses to the last bit), and checkpoints are gone
    hist = [[json.loads(line) for line in (base / run / "models" / MODEL / "history.jsonl").read_text().splitlines()]
            for run in ("reference", "killed")]
    assert [h["epoch"] for h in hist[1]] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in hist[0]] == [h["train_loss"] for h in hist[1]]
    assert not (killed_dir / "checkpoint").exists()
    ref_meta = json.loads((base / "reference" / "models" / MODEL / "model.json").read_text())
    res_meta = json.loads((killed_dir / "model.json").read_text())
    assert res_meta["metrics"] == ref_meta["metrics"] and res_meta["fingerprint"] == ref_meta["fingerprint"]


@pytest.mark.parametrize("name, code, word", [("terminated", 143, "SIGTERM"), ("interrupted", 130, "SIGINT")])
def test_sigterm_and_sigint_exit_with_a_resume_message_and_a_loadable_checkpoint(runs, name, code, word):
    base, codes, logs, sent, _, _ = runs
    assert sent[name], logs[name]
    assert codes[name] == code, logs[name]
    last = logs[name].strip().splitlines()[-1]
    assert last.startswith("robsal: ") and word in last and "re-run the same command to resume" in last
    assert "Traceback" not in logs[name]
    folder = base / name / "models" / MODEL / "checkpoint"
    ck = read_checkpoint(folder / LATEST)  # verified (sha256) and complete
    assert ck.epoch >= 1 and len(ck.state["history"]) == ck.epoch
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary left
    model = build_model("resnet18", ["mel", "nv", "bkl"], image_size=32)
    restore_model(model, ck)
    assert torch.equal(model.state_dict()["net.fc.weight"], ck.tensors["model/net.fc.weight"])
