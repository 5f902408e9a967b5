"""Plain data for the report's templates: numbers formatted as text, tables as rows of cells,
any JSON value as a list of blocks. Nothing here writes HTML: the templates do, and they
escape every string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DASH = "\u2013"  # en dash: no value


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, and how it is marked (a verdict colour, bold, italic)."""

    text: str = ""
    cls: str = ""  # a CSS class of the text (verdict-supported, ...), "" = none
    strong: bool = False
    em: bool = False


@dataclass
class Table:
    """A table of text cells; ``text_cols``: the columns aligned left (text, not numbers)."""

    header: list[str]
    rows: list[list[Cell]]
    text_cols: Sequence[int] = (0,)
    cls: str = ""
    scroll: bool = False  # in a scrolling box (long tables)

    def align(self, i: int) -> str:
        return "text" if i in self.text_cols else ""


@dataclass
class Block:
    """One piece of a rendered JSON value: a heading, a table, a bullet list or a paragraph (one cell)."""

    kind: str  # "heading" | "table" | "list" | "para"
    text: str = ""  # heading text
    tag: str = "h4"  # heading level
    table: Table | None = None
    items: list[str] = field(default_factory=list)
    cell: Cell | None = None


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (scientific when tiny or huge), 'NaN', or an en dash for None."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) < 10 ** (-digits) or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    """A share as '62.5%' (an en dash when it is not a finite number)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
        return f"{100.0 * float(value):.1f}%"
    return DASH


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verdict_class(text: str) -> str:
    """The CSS class that colours a verdict ('' when the text is no verdict)."""
    low = text.lower()
    if low.startswith(("supported", "partly supported")):
        return "verdict-supported"
    if low.startswith(("contradicted", "refuted")):
        return "verdict-contradicted"
    if low.startswith(("not supported", "mixed", "inconclusive")):
        return "verdict-not"
    if low.startswith("not comparable"):
        return "verdict-na"
    return ""


def cell(value: Any, digits: int = 4) -> Cell:
    """A JSON value as a cell: floats with ``digits`` decimals, objects as JSON text, verdicts coloured."""
    if isinstance(value, float):
        return Cell(fmt(value, digits))
    if isinstance(value, (dict, list)):
        return Cell(json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, str) and verdict_class(value):
        return Cell(value, cls=verdict_class(value))
    return Cell(fmt(value))


def text_table(header: Sequence[str], rows: Iterable[Sequence[str | Cell]], text_cols: Sequence[int] = (0,),
               cls: str = "", scroll: bool = False) -> Table:
    """A :class:`Table` from strings (or cells)."""
    return Table(list(header), [[c if isinstance(c, Cell) else Cell(c) for c in row] for row in rows],
                 text_cols, cls, scroll)


def records_table(records: list[dict[str, Any]], columns: Sequence[str] | None = None, scroll: bool = True) -> Table:
    """Rows of JSON objects: one column per key (``columns``, else every key in first-seen order)."""
    cols: list[str] = list(columns or [])
    if not cols:
        for r in records:
            cols += [k for k in r if k not in cols]
    rows = [[cell(r.get(c)) for c in cols] for r in records]
    text_cols = [i for i, c in enumerate(cols) if all(isinstance(r.get(c), str) or r.get(c) is None for r in records)]
    return Table(list(cols), rows, text_cols, scroll=scroll)


def json_blocks(obj: Any, depth: int = 0) -> list[Block]:
    """Any JSON value as blocks: lists of records become tables, lists of strings bullet lists,
    mappings a key/value table of their scalars and a headed part per nested value."""
    if isinstance(obj, list):
        if obj and all(isinstance(r, dict) for r in obj):
            return [Block("table", table=records_table(obj))]
        if obj and all(isinstance(r, str) for r in obj):
            return [Block("list", items=list(obj))]
        return [Block("para", cell=Cell(json.dumps(obj, ensure_ascii=False, default=str)))]
    if not isinstance(obj, dict):
        return [Block("para", cell=cell(obj))]
    scalars = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
    nested = {k: v for k, v in obj.items() if isinstance(v, (dict, list))}
    out = []
    if scalars:
        out.append(Block("table", table=Table(["key", "value"], [[Cell(str(k)), cell(v)] for k, v in scalars.items()],
                                              (0, 1))))
    if nested and all(isinstance(v, dict) and not any(isinstance(x, (dict, list)) for x in v.values())
                      for v in nested.values()):
        # {name: {field: scalar}} -> one table with a row per name
        return out + [Block("table", table=records_table([{"name": k, **v} for k, v in nested.items()]))]
    for k, v in nested.items():
        out.append(Block("heading", text=str(k), tag="h4" if depth == 0 else "h5"))
        out += json_blocks(v, depth + 1)
    return out
