"""The machinery of :mod:`robsal.rundir.records`: errors, field checks and the record base class.

A record is a dataclass whose typed fields carry a check in their metadata
(``field(metadata=check(NUM))``), a nested record (``one(Gate)``), a list of records
(``many(Verdict)``) or a mapping name -> record (``by_name(SummaryModel)``).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from robsal.errors import CheckpointError, UserError
from robsal.io import write_json

# --------------------------------------------------------------------------- errors


class RecordError(UserError):
    """A run-directory record that is damaged, hand-edited or from an older robsal (one line;
    a control character quoted from the file is escaped by :class:`~robsal.errors.UserError`)."""


class ModelRecordError(RecordError, CheckpointError):
    """A ``model.json`` that cannot be used (also a :class:`~robsal.errors.CheckpointError`)."""


# --------------------------------------------------------------------------- field checks
# (predicate, what the field must be) pairs, used as ``field(metadata=check(RULE))``


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def opt(rule: tuple) -> tuple:
    """``rule`` that also accepts null."""
    pred, want = rule
    return (lambda v: v is None or pred(v), f"{want} or null")


STR = (lambda v: isinstance(v, str), "a string")
BOOL = (lambda v: isinstance(v, bool), "true or false")
INT = (_is_int, "a whole number")
NUM = (_is_num, "a number")
NONNEG = (lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "a number >= 0")
DICT = (lambda v: isinstance(v, dict), "an object")
LIST = (lambda v: isinstance(v, list), "a list")
STR_LIST = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
NUM_MAP = (lambda v: isinstance(v, dict) and all(x is None or _is_num(x) for x in v.values()),
           "an object of numbers")
INT_MAP = (lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()), "an object of whole numbers")
CLASSES = (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) and c for c in v)
           and len(set(v)) == len(v), "a list of at least two distinct class names")
RGB = (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_num(x) and math.isfinite(x) for x in v),
       "a list of 3 numbers")
RGB_POS = (lambda v: RGB[0](v) and all(x > 0 for x in v), "a list of 3 numbers > 0")
PIXELS = (lambda v: _is_int(v) and 1 <= v <= 8192, "a whole number of pixels")
MATRIX = (lambda v: isinstance(v, list) and all(isinstance(r, list) and all(_is_num(x) for x in r) for r in v),
          "a list of rows of numbers")


def check(rule: tuple, *, nullable: bool = True) -> dict[str, Any]:
    """Field metadata: the value must pass ``rule`` (a (predicate, description) pair); null only if ``nullable``."""
    return {"check": rule, "required_value": not nullable}


def one(record: type) -> dict[str, Any]:
    """Field metadata: the value is a nested record."""
    return {"record": record}


def many(record: type) -> dict[str, Any]:
    """Field metadata: the value is a list of records."""
    return {"records": record}


def by_name(record: type) -> dict[str, Any]:
    """Field metadata: the value is an object of name -> record."""
    return {"record_map": record}


# --------------------------------------------------------------------------- the base


def _plain(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass
class Record:
    """Shared ``from_dict``/``to_dict``/``load``/``save`` of the records of :mod:`robsal.rundir.records`.

    Typed fields are the dataclass fields; ``REQUIRED`` lists those a file must have.
    ``extra`` keeps every key the record does not type, and ``keys`` the file's key order;
    ``to_dict`` writes the keys in that order (a record made in code: the fields' order),
    then typed fields that were absent but are now set, then new ``extra`` keys.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    ERROR: ClassVar[type[RecordError]] = RecordError
    WRITER: ClassVar[str] = "robsal"  # the command that rewrites the file (for the message)

    @classmethod
    def fix(cls, path: Path) -> str:
        return f"rebuild it with `{cls.WRITER}`"

    @classmethod
    def _typed(cls) -> dict[str, Any]:
        return {f.name: f for f in fields(cls) if f.name not in ("extra", "keys")}

    @classmethod
    def from_dict(cls, data: Any, path: str | Path, *, fix: str | None = None, where: str = "") -> Any:
        """The record of ``data`` (the parsed JSON of ``path``); :class:`RecordError` if it does not fit."""
        path = Path(path)
        fix = fix or cls.fix(path)
        if not isinstance(data, dict):
            what = f"{path}: {where.rstrip('.')}" if where else str(path)
            raise cls.ERROR(f"{what} must hold a JSON object, not {type_name(data)}; {fix}")
        for key in cls.REQUIRED:
            if key not in data:
                raise cls.ERROR(
                    f"{path} lacks the key {where + key!r} (it is from an older robsal version or damaged); {fix}"
                )
        typed = cls._typed()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            f = typed.get(key)
            if f is None:
                extra[key] = value
                continue
            values[key] = cls._convert(f, value, path, fix, where + key)
        obj = cls(**values, extra=extra)
        obj.keys = list(data)
        return obj

    @classmethod
    def _convert(cls, f: Any, value: Any, path: Path, fix: str, name: str) -> Any:
        meta = f.metadata
        if value is None:
            if meta.get("required_value"):
                raise cls.ERROR(f"{path}: {name} must not be null (the file was edited or damaged); {fix}")
            return None
        if "record" in meta:
            return meta["record"].from_dict(value, path, fix=fix, where=name + ".")
        if "records" in meta or "record_map" in meta:
            if not isinstance(value, list if "records" in meta else dict):
                want = "a list" if "records" in meta else "an object"
                raise cls.ERROR(f"{path}: {name} must be {want} (the file was edited or damaged); {fix}")
            if "records" in meta:
                return [meta["records"].from_dict(v, path, fix=fix, where=f"{name}[{i}].") for i, v in enumerate(value)]
            return {k: meta["record_map"].from_dict(v, path, fix=fix, where=f"{name}.{k}.") for k, v in value.items()}
        pred, want = meta.get("check", (lambda v: True, ""))
        if not pred(value):
            raise cls.ERROR(f"{path}: {name} must be {want} (the file was edited or damaged); {fix}")
        return value

    def to_dict(self) -> dict[str, Any]:
        typed = self._typed()
        order = self.keys if self.keys is not None else list(typed)
        out: dict[str, Any] = {}
        for key in order:
            if key in typed:
                out[key] = _plain(getattr(self, key))
            elif key in self.extra:
                out[key] = _plain(self.extra[key])
        for key in typed:
            if key not in out and getattr(self, key) is not None:
                out[key] = _plain(getattr(self, key))
        for key, value in self.extra.items():
            if key not in out:
                out[key] = _plain(value)
        return out

    def set(self, **values: Any) -> None:
        """Set fields (typed ones as attributes, others in ``extra``), keeping a loaded file's key order."""
        typed = self._typed()
        for key, value in values.items():
            if key in typed:
                setattr(self, key, value)
            else:
                self.extra[key] = value
            if self.keys is not None and key not in self.keys:
                self.keys.append(key)

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Read and check ``path``; one-line :class:`RecordError` naming the file, field and fix."""
        path = Path(path)
        return cls.from_dict(read(path, cls.ERROR, cls.fix(path)), path)

    def save(self, path: str | Path) -> None:
        """Write the record to ``path`` atomically (same JSON as the writers have always made)."""
        write_json(path, self.to_dict())


def type_name(v: Any) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if _is_num(v) else type(v).__name__)


# a run record is small: a larger "record" is a mistake or an attack, not something to read whole
MAX_RECORD_BYTES = 64 << 20


def check_record_file(path: str | Path, fix: str, max_bytes: int | None = MAX_RECORD_BYTES,
                      error: type[RecordError] = RecordError) -> Path:
    """``path`` if it is a regular file of at most ``max_bytes`` (a pipe would block, ``/dev/zero``
    never end); else ``error``. A missing file stays ``FileNotFoundError``."""
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file (a pipe, device or folder); {fix}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{path} is {st.st_size} bytes, more than a robsal record has; {fix}")
    return path


def read(path: Path, error: type[RecordError], fix: str) -> Any:
    try:
        check_record_file(path, fix, error=error)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except RecursionError:
        raise error(f"{path} nests too deeply to be a robsal record; {fix}") from None


def run_of(path: Path, depth: int) -> Path | None:
    """The run folder ``depth`` levels above ``path`` (None when the path is not inside one)."""
    parents = path.parents
    return parents[depth] if len(parents) > depth else None
