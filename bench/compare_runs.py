"""Compare the results of two run folders bit for bit.

Used to show that a refactoring changed no number: make a reference run on the old commit,
the same run on the new one (same config, seed, device and thread count), then::

    python bench/compare_runs.py REF_RUN NEW_RUN

It compares ``splits.csv`` (bytes), every ``models/<name>/model.safetensors`` (every tensor,
exactly), every ``saliency/<model>/<method>.npz`` (every array, exactly) and
``metrics/per_image.csv`` (every value, exactly). It prints one line per file and exits 1 if
any differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file


def _same_bytes(a: Path, b: Path) -> str | None:
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def _same_safetensors(a: Path, b: Path) -> str | None:
    ta, tb = load_file(str(a)), load_file(str(b))
    if set(ta) != set(tb):
        return f"tensor names differ ({sorted(set(ta) ^ set(tb))[:3]})"
    bad = [k for k in ta if ta[k].shape != tb[k].shape or not np.array_equal(ta[k], tb[k])]
    return f"{len(bad)} of {len(ta)} tensors differ (e.g. {bad[0]})" if bad else None


def _same_npz(a: Path, b: Path) -> str | None:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if set(za.files) != set(zb.files):
            return f"arrays differ ({sorted(set(za.files) ^ set(zb.files))})"
        bad = [k for k in za.files if za[k].shape != zb[k].shape or not np.array_equal(za[k], zb[k])]
    return f"arrays {bad} differ" if bad else None


def _same_per_image(a: Path, b: Path) -> str | None:
    key = ["image_id", "model", "method", "metric"]
    da = pd.read_csv(a).sort_values(key).reset_index(drop=True)
    db = pd.read_csv(b).sort_values(key).reset_index(drop=True)
    if len(da) != len(db) or not da[key].equals(db[key]):
        return f"rows differ ({len(da)} vs {len(db)})"
    va, vb = da["value"].to_numpy(float), db["value"].to_numpy(float)
    same = (va == vb) | (np.isnan(va) & np.isnan(vb))
    return None if same.all() else f"{int((~same).sum())} of {len(va)} values differ"


CHECKS = (
    ("splits.csv", _same_bytes),
    ("models/*/model.safetensors", _same_safetensors),
    ("saliency/*/*.npz", _same_npz),
    ("metrics/per_image.csv", _same_per_image),
)


def compare(ref: Path, new: Path) -> list[tuple[str, str | None]]:
    """(relative path, None if identical else what differs) for every compared file."""
    out: list[tuple[str, str | None]] = []
    for pattern, check in CHECKS:
        rels = sorted({p.relative_to(ref).as_posix() for p in ref.glob(pattern)}
                      | {p.relative_to(new).as_posix() for p in new.glob(pattern)})
        if not rels:
            out.append((pattern, "missing in both"))
        for rel in rels:
            a, b = ref / rel, new / rel
            if not a.exists() or not b.exists():
                out.append((rel, f"missing in {ref if not a.exists() else new}"))
            else:
                out.append((rel, check(a, b)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", type=Path, help="reference run folder (old commit)")
    ap.add_argument("new", type=Path, help="run folder to check (new commit)")
    args = ap.parse_args(argv)
    results = compare(args.ref, args.new)
    for rel, diff in results:
        print(f"{'identical' if diff is None else 'DIFFERS  '}  {rel}{'' if diff is None else ': ' + diff}")
    n_bad = sum(d is not None for _, d in results)
    print(f"{len(results) - n_bad} identical, {n_bad} differ")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
