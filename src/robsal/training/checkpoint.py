"""Epoch checkpoints: the whole training state, written atomically, verified on load.

Layout (``RUN/models/<name>/checkpoint/``)::

    latest.safetensors     the state after the last finished epoch
    previous.safetensors   the one before (kept in case ``latest`` is damaged)

Each file is one safetensors file, so loading never unpickles anything:

* tensors: ``model/<key>`` (the ``state_dict``), ``optimizer/<param index>/<key>``
  (Adam moments and step counts), ``rng/torch``, ``rng/cuda/<i>``, ``rng/numpy``,
  ``rng/python`` (the global generators' states);
* metadata: ``format`` (``robsal-checkpoint/1``), ``state`` (JSON: training
  fingerprint, phase plan, position = phase index / epoch within the phase / global
  epoch, the history records so far, optimiser hyper-parameters, scheduler state,
  the scalar parts of the RNG states) and ``sha256``, a digest of the state JSON and
  of every tensor (name, dtype, shape, bytes).

A write goes to a temporary file, is fsynced, then ``latest`` is renamed to
``previous`` and the temporary file to ``latest`` (:func:`robsal.io.atomic_path`),
with SIGINT/SIGTERM held until it is done (:func:`robsal.signals.deferred`). A kill
at any moment therefore leaves at least one complete checkpoint. On load, a file
that is truncated, is not safetensors, is not a robsal checkpoint or fails its
digest is skipped with a warning and ``previous`` is used.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from robsal import signals
from robsal.errors import CheckpointError
from robsal.io import atomic_path, clean_temporaries, save_safetensors

FORMAT = "robsal-checkpoint/1"
LATEST = "latest.safetensors"
PREVIOUS = "previous.safetensors"


@dataclass
class Checkpoint:
    """A verified checkpoint: its tensors (on the CPU), its JSON state and where it came from."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix/`` with the prefix removed."""
        p = prefix + "/"
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


# --------------------------------------------------------------------------- file format


def _digest(tensors: dict[str, torch.Tensor], state_json: str) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def write_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write ``folder/latest.safetensors`` (the old one becomes ``previous``); returns its path."""
    folder = Path(folder)
    cpu: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        t = v.detach().to("cpu").contiguous()
        if t.numel() and t.data_ptr() in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        if t.numel():
            seen.add(t.data_ptr())
        cpu[k] = t
    state_json = json.dumps(state)  # key order kept (history records read back as written)
    metadata = {"format": FORMAT, "state": state_json, "sha256": _digest(cpu, state_json)}
    with signals.deferred():  # a Ctrl-C or SIGTERM now is handled once the file is complete
        with atomic_path(folder / LATEST, suffix=".safetensors", keep_previous=folder / PREVIOUS) as tmp:
            save_safetensors(cpu, tmp, metadata=metadata)
    return folder / LATEST


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify one checkpoint file; CheckpointError says what is wrong with it."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own types for truncated or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({reason})") from None
    if metadata.get("format") != FORMAT or "state" not in metadata:
        raise CheckpointError(f"{path} is not a robsal checkpoint (format {metadata.get('format')!r})")
    if metadata.get("sha256") != _digest(tensors, metadata["state"]):
        raise CheckpointError(f"{path} fails its sha256 check (damaged on disk)")
    try:
        state = json.loads(metadata["state"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has an unreadable state record") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"{path} has no training position")
    return Checkpoint(tensors, state, path)


def load_latest(folder: str | Path, *, fingerprint: str | None = None) -> Checkpoint | None:
    """The newest usable checkpoint in ``folder`` (``latest``, else ``previous``), or None.

    A damaged ``latest`` is reported with a warning naming the file and the epoch resumed
    from instead; a checkpoint of another training configuration (``fingerprint``) is
    ignored with a warning.
    """
    folder = Path(folder)
    problems: list[str] = []
    for name in (LATEST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            ck = read_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if fingerprint is not None and ck.state.get("fingerprint") != fingerprint:
            problems.append(f"{path} was written for another training configuration")
            continue
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resuming from {path.name} (epoch {ck.epoch})", stacklevel=2)
        return ck
    if problems:
        warnings.warn(f"{'; '.join(problems)}; no usable checkpoint, training from the start", stacklevel=2)
    return None


def remove_checkpoints(folder: str | Path) -> None:
    """Delete the checkpoint files of ``folder`` (and the folder when it ends up empty)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    clean_temporaries(folder)
    for name in (LATEST, PREVIOUS):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there; leave it
        pass


# --------------------------------------------------------------------------- training state


def _encode(obj: Any) -> Any:
    """Optimizer/scheduler state -> JSON (tuples, Counters and non-string keys kept)."""
    if isinstance(obj, collections.Counter):
        return {"__counter__": [[_encode(k), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v) for k, v in obj.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__counter__"}:
            return collections.Counter({_decode(k): v for k, v in obj["__counter__"]})
        if set(obj) == {"__items__"}:
            return {_decode(k): _decode(v) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v) for v in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    return obj


def _rng_capture() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, py_gauss = random.getstate()
    tensors["rng/python"] = torch.tensor(internal, dtype=torch.int64)
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, py_gauss]}
    return tensors, scalars


def _rng_restore(ck: Checkpoint) -> None:
    torch.set_rng_state(ck.tensors["rng/torch"])
    cuda = ck.group("rng/cuda")
    if cuda and torch.cuda.is_available():
        for i in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda[str(i)], i)
    kind, pos, has_gauss, gauss = ck.state["rng"]["numpy"]
    np.random.set_state((kind, ck.tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = ck.state["rng"]["python"]
    random.setstate((version, tuple(int(v) for v in ck.tensors["rng/python"].tolist()), py_gauss))


def save_training_state(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: dict[str, Any],
    history: list[dict[str, Any]],
    fingerprint: str,
) -> Path:
    """Checkpoint the model, optimiser, scheduler, RNG states and history after an epoch.

    ``position``: ``epoch`` (global epochs done), ``phase_index``, ``phase``, ``phase_epoch``
    (epochs done in that phase), ``plan`` ([[phase name, epochs], ...]) and ``start_epoch``.
    """
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer/{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = _encode(v)
    rng_tensors, rng_scalars = _rng_capture()
    tensors.update(rng_tensors)
    state = {
        **position,
        "fingerprint": fingerprint,
        "history": history,
        "optimizer": {"param_groups": _encode(opt["param_groups"]), "scalars": scalars,
                      "params_with_state": [int(p) for p in opt["state"]]},
        "scheduler": _encode(scheduler.state_dict()),
        "rng": rng_scalars,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__,
    }
    return write_checkpoint(folder, tensors, state)


def restore_model(model: torch.nn.Module, ck: Checkpoint) -> None:
    """Load the checkpoint's weights (strict) and global RNG states."""
    try:
        model.load_state_dict(ck.group("model"), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"{ck.path} does not fit this model ({first}); delete {ck.path.parent}") from None
    _rng_restore(ck)


def restore_optimizer(optimizer: torch.optim.Optimizer, scheduler: Any, ck: Checkpoint) -> None:
    """Load the optimiser and scheduler state saved with the checkpoint."""
    o = ck.state["optimizer"]
    per_param = {int(k): v for k, v in o["scalars"].items()}
    state: dict[int, dict[str, Any]] = {}
    for pid in o["params_with_state"]:
        st = {k: _decode(v) for k, v in per_param.get(pid, {}).items()}
        st.update(ck.group(f"optimizer/{pid}"))
        state[pid] = st
    optimizer.load_state_dict({"state": state, "param_groups": _decode(o["param_groups"])})
    for group in optimizer.param_groups:  # moments in the parameters' memory format (channels_last)
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
    scheduler.load_state_dict(_decode(ck.state["scheduler"]))
