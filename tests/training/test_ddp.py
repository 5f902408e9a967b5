"""Data-parallel training: 2 CPU processes (torchrun, Gloo) give the weights of one process, same global batch.

The test starts ``python -m torch.distributed.run --nproc_per_node 2`` on 127.0.0.1 with a
free port; the worker is this file run as a script (``--worker OUT``). Each scenario trains
the TinyCNN of conftest (BatchNorm included, so the synchronised BatchNorm is exercised) with
``fit`` for a head-only epoch and a full epoch, with augmentation, over global batches that
do not split evenly (including a last batch of one image, whose second share is empty); one
scenario adds a PGD adversary with random starts. The same scenarios then run in this
process, and every weight and buffer must agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robsal.config import PhaseConfig, load_config
from robsal.errors import ConfigError
from robsal.training import distributed, fit, shard_bounds
from robsal.training.checkpoint import LATEST
from robsal.training.loop import Adversary, make_augment
from robsal.training.plan import TrainPlan

try:
    from .conftest import TinyCNN, make_toy_data
except ImportError:  # run as the torchrun worker script
    from conftest import TinyCNN, make_toy_data  # type: ignore[no-redef]

CPU = torch.device("cpu")
N_TRAIN = 7  # per class, 3 classes: 21 training images
SCENARIOS = {
    # global batches 10, 10, 1: shares 5/5, 5/5 and 1/0 (an empty share)
    "standard": {"batch_size": 10, "adversary": False, "epochs": 1},
    # global batches 8, 8, 5: shares 4/4, 4/4, 3/2; PGD-L2, 2 steps, random start
    "pgd": {"batch_size": 8, "adversary": True, "epochs": 1},
    # as pgd with two full epochs and checkpoints: run, drop latest.safetensors, resume
    "resume": {"batch_size": 8, "adversary": True, "epochs": 2, "checkpoint": True},
}


def toy():
    return make_toy_data(n_train=N_TRAIN, n_test=2, n_val=2, size=16, seed=1)


def run_scenario(name: str, data, workdir: Path) -> tuple[torch.nn.Module, list[dict]]:
    """Train one scenario with ``fit`` (data-parallel when a process group runs); (model, history)."""
    sc = SCENARIOS[name]
    cfg = load_config("tiny", ["device=cpu"])
    assert cfg.augment.enabled
    p1 = PhaseConfig(epochs=1, batch_size=sc["batch_size"], lr=1e-2, trainable="head")
    p2 = PhaseConfig(epochs=sc["epochs"], batch_size=sc["batch_size"], lr=1e-2, trainable="all")
    torch.manual_seed(0)
    model = TinyCNN()
    # No bias before BatchNorm (as in ResNets): its true gradient is 0, and Adam would turn the
    # rounding noise it gets instead into steps of +-lr, in one process as in two.
    model.features[0].bias = None
    plan = TrainPlan.from_config(
        cfg, [("phase1", p1), ("phase2", p2)], data.indices("train"), seed=5, device=CPU,
        adversary=Adversary(0.5, steps=2) if sc["adversary"] else None, augment=make_augment(cfg.augment),
        history_path=workdir / f"{name}.history.jsonl", progress=False,
        checkpoint_dir=workdir / f"{name}.checkpoint" if sc.get("checkpoint") else None, fingerprint="ddp-test",
    )
    history = fit(model, data, plan)
    return model, history


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- worker (torchrun)


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    data = toy()
    with distributed.session(CPU):
        r = distributed.rank()
        assert distributed.world_size() == 2
        report: dict = {"rank": r}
        for name in SCENARIOS:
            model, history = run_scenario(name, data, out)
            assert type(model.features[1]) is torch.nn.BatchNorm2d  # synchronised BatchNorm reverted
            save_file(state(model), str(out / f"{name}.rank{r}.safetensors"))
            report[name] = [h["train_loss"] for h in history]
        # resume: rank 0 drops latest.safetensors (the last epoch); every process resumes from
        # previous.safetensors, which rank 0 picks, and redoes the last epoch
        distributed.on_main(lambda: (out / "resume.checkpoint" / LATEST).unlink())
        model, history = run_scenario("resume", data, out)
        save_file(state(model), str(out / f"resumed.rank{r}.safetensors"))
        report["resumed"] = [h["train_loss"] for h in history]
        # a failure in rank 0 stops the other process too
        try:
            distributed.on_main(lambda: 1 / 0)
        except ZeroDivisionError:
            report["failure"] = "ZeroDivisionError"
        except distributed.PeerFailed:
            report["failure"] = "PeerFailed"
        (out / f"report.rank{r}.json").write_text(json.dumps(report))


# --------------------------------------------------------------------------- tests


def test_shard_bounds_tile_every_batch():
    assert [shard_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [shard_bounds(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]  # more processes than images
    assert [shard_bounds(0, 3, r) for r in range(3)] == [(0, 0)] * 3
    for n in range(0, 40):
        for world in range(1, 9):
            bounds = [shard_bounds(n, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    # the last partial batch of an epoch: 23 images, global batch 8, 3 processes
    perm = np.arange(23)
    shares = [[perm[b : b + 8][slice(*shard_bounds(len(perm[b : b + 8]), 3, r))] for r in range(3)]
              for b in range(0, 23, 8)]
    assert [[len(s) for s in row] for row in shares] == [[3, 3, 2], [3, 3, 2], [3, 2, 2]]
    assert np.array_equal(np.concatenate([s for row in shares for s in row]), perm)
    with pytest.raises(ValueError):
        shard_bounds(4, 2, 2)


def test_loss_scale_makes_the_averaged_gradient_the_global_mean():
    """Uneven shares (and an empty one), each minimising scale * its summed loss: DDP's average is the mean gradient."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    (full,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x @ w, y), w)
    for world in (2, 4, 12):
        grads = []
        for r in range(world):
            lo, hi = shard_bounds(9, world, r)
            loss = torch.nn.functional.cross_entropy(x[lo:hi] @ w, y[lo:hi], reduction="sum")
            grads.append(torch.autograd.grad(loss * distributed.loss_scale(9, world), w)[0])
        torch.testing.assert_close(torch.stack(grads).mean(0), full, rtol=1e-12, atol=1e-14)  # DDP: mean over ranks


def test_torchrun_environment_is_read_and_checked():
    assert distributed.torchrun_env({}) is None
    assert distributed.torchrun_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None  # one process
    env = distributed.torchrun_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.world_size, env.rank, env.local_rank) == (4, 3, 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        distributed.torchrun_env({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(ConfigError, match="RANK=4"):
        distributed.torchrun_env({"WORLD_SIZE": "4", "RANK": "4", "LOCAL_RANK": "0"})


def test_tune_refuses_torchrun(tmp_path, capsys, monkeypatch):
    from robsal.cli import main

    monkeypatch.setenv("ROBSAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rc = main(["tune", "--config", "tiny", "--set", "device=cpu", "--out", str(tmp_path / "t"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "robsal tune runs in one process" in err and not (tmp_path / "t").exists()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(Path(__file__).resolve()), "--worker", str(tmp_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"2-process run: {time.perf_counter() - t0:.1f} s")

    reports = [json.loads((tmp_path / f"report.rank{r}.json").read_text()) for r in range(2)]
    assert [r["failure"] for r in reports] == ["ZeroDivisionError", "PeerFailed"]
    data = toy()
    ref_dir = tmp_path / "one"
    ref_dir.mkdir()
    torch.manual_seed(0)
    init = state(TinyCNN())
    for name in SCENARIOS:
        model, history = run_scenario(name, data, ref_dir)
        ref = state(model)
        # training moved every parameter far beyond the tolerance (the comparison can fail)
        for k, p in model.named_parameters():
            assert float((ref[k] - init[k]).abs().max()) > 1e-3, f"{name}: {k} barely trained"
        ranks = [load_file(str(tmp_path / f"{name}.rank{r}.safetensors")) for r in range(2)]
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ref), f"{name}: the processes' weights differ"
        for r, got in enumerate(ranks):
            assert got.keys() == ref.keys()
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-5, msg=f"{name} rank {r}: {k}")
            # the epoch's train loss is the global one (summed over the processes)
            np.testing.assert_allclose(reports[r][name], [h["train_loss"] for h in history], rtol=1e-5)
        # rank 0 alone wrote the history: one line per epoch
        lines = (tmp_path / f"{name}.history.jsonl").read_text().splitlines()
        assert len(lines) == len(history) == 1 + SCENARIOS[name]["epochs"]
    # resumed from previous.safetensors (chosen by rank 0) on both processes: bit-identical to the full run
    full = load_file(str(tmp_path / "resume.rank0.safetensors"))
    for r in range(2):
        resumed = load_file(str(tmp_path / f"resumed.rank{r}.safetensors"))
        assert all(torch.equal(resumed[k], full[k]) for k in full), f"rank {r} resumed differently"
        assert reports[r]["resumed"] == reports[0]["resume"]


if __name__ == "__main__" and "--worker" in sys.argv:
    worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
