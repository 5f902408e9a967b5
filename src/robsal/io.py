"""Atomic file output: every file robsal writes appears whole or not at all.

Each writer writes to a temporary file in the destination folder, flushes and
fsyncs it, then renames it over the destination (``os.replace`` is atomic on
POSIX and Windows). A crash, Ctrl-C or full disk therefore leaves the previous
version of the file intact. A full disk (``ENOSPC``, ``EDQUOT``) is reported as
:class:`DiskFullError`, a one-line user error that is also an ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from robsal.errors import UserError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(UserError, OSError):
    """The disk (or quota) filled up while writing; the previous version of the file is intact."""

    def __str__(self) -> str:  # one line without the "[Errno 28]" prefix
        return self.strerror or super().__str__()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the file system's "no space left" or "quota exceeded"."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def current_umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make renames inside ``folder`` durable (best effort; not every OS can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], suffix: str = "", *, keep_previous: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    ``suffix`` is kept on the temporary name so that libraries which infer the
    format from the extension (matplotlib, numpy) behave. With ``keep_previous``,
    the old ``path`` (if any) is renamed to ``keep_previous`` just before the new
    file takes its place, so two generations exist (used by training checkpoints).
    A full disk raises :class:`DiskFullError`; the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in _DISK_FULL and not isinstance(exc, DiskFullError):
                raise DiskFullError(
                    exc.errno,
                    f"no space left on the device while writing {path}; the previous version is intact; "
                    "free some space and re-run the same command",
                ) from None
            raise
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp_path, path)
        if keep_previous is not None:
            fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def reserve(path: str | os.PathLike[str]) -> None:
    """Allocate every block of the file at ``path`` now (its current length), before it is memory-mapped.

    Writing into a sparse memory-mapped file on a full disk kills the process with SIGBUS
    (no message, a temporary left behind); with the blocks reserved, a full disk is an
    ``ENOSPC`` here instead, which :func:`atomic_path` turns into :class:`DiskFullError`.
    File systems without ``posix_fallocate`` get the file's blocks by rewriting its bytes.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except AttributeError:  # not on this OS
            pass
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                raise
        for off in range(0, size, 1 << 20):  # rewrite each chunk as it is: the blocks get allocated
            os.pwrite(fd, os.pread(fd, min(1 << 20, size - off), off), off)
    finally:
        os.close(fd)


def save_safetensors(tensors: dict, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` whose full-disk error is an ``OSError(ENOSPC)``.

    safetensors reports I/O errors as its own ``SafetensorError`` (with the OS error code in
    the text); inside :func:`atomic_path` the ``ENOSPC`` becomes :class:`DiskFullError`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        text = str(exc)
        if "code: 28" in text or "No space left" in text or "code: 122" in text or "quota" in text.lower():
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {path}") from None
        raise


def clean_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files that :func:`atomic_path` left in ``folder`` when its process was killed.

    Only names of the form ``.<name>.<random>.tmp<suffix>`` are touched; call this while
    holding the run lock (no other writer can be active). Returns how many were removed.
    """
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.glob(".*.tmp*"):
        if p.is_file() and ".tmp" in p.name:
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` when the block ends without error."""
    if "w" not in mode:
        raise ValueError("atomic_open is for writing only")
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of ``path``: a regular file of at most 64 MiB holding a JSON object.

    Anything else (a pipe, a device, a huge file, no UTF-8, no JSON, a list or a number) is one
    line, :class:`robsal.rundir.RecordError` naming the file. A missing file stays
    ``FileNotFoundError``. The fields are checked by the typed records of :mod:`robsal.rundir`.
    """
    from robsal.rundir.schema import RecordError, check_record_file, type_name

    fix = "restore it, or delete it and re-run the stage that writes it"
    check_record_file(path, fix)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path} is not UTF-8 text; {fix}") from None
    except RecursionError:
        raise RecordError(f"{path} nests too deeply to be a robsal record; {fix}") from None
    if not isinstance(doc, dict):
        raise RecordError(f"{path} must hold a JSON object, not {type_name(doc)}; {fix}")
    return doc


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON object as a line (rewrites the file atomically; history files are small)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text(path, old + json.dumps(obj, default=_json_default) + "\n")


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by :func:`save_npz` (never unpickles objects)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def check_regular_file(path: str | Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular file (not a FIFO, device or socket) of at most ``max_bytes``.

    Opening a FIFO blocks until a writer comes and ``/dev/zero`` never ends: both are refused
    with a one-line :class:`~robsal.errors.DataError` before anything is read.
    """
    import stat as _stat

    from robsal.errors import DataError

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not _stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} {path} is not a regular file (a pipe, device or folder); give a file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} a {what} may have")
    return path
