"""The positive control's results: where each rate's outputs lie, and their aggregation into
the tables and verdicts of ``RUN/control/`` (:func:`aggregate`; issue items 3-5).

Reliance (3): flip rate and probability drop when the artifact is removed (planted class) or
added (other classes), per rate and model, with bootstrap CIs. Detection (4): the share of each
method's map on the artifact, its lift over the artifact's area, and AUROCs separating reliant
from non-reliant cases; a verdict per model and method with Holm-corrected tests. Standard vs
robust (5): paired verdicts on reliance and on the shortcut's visibility. See
:mod:`robsal.experiments.control` for the layout and :mod:`robsal.metrics.shortcut` for the
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robsal.config import Config, load_run_config
from robsal.errors import DataError
from robsal.io import read_json, write_json, write_text
from robsal.metrics import shortcut as sc
from robsal.metrics.stats import verdict_status
from robsal.utils import json_safe

CONTROL_DIR = "control"
GROUPS = ("planted", "other")


def rate_folder(rate: float) -> str:
    """The folder name of a rate: p0, p0.5, p0.9."""
    return f"p{float(rate):g}"


def _standard_and_robust(cfg: Config) -> tuple[str, list[str]]:
    standard = next(m.name for m in cfg.models if m.eps == 0)
    return standard, [m.name for m in cfg.models if m.eps > 0]


@dataclass
class _Rates:
    """What the finished rates of a control folder wrote, read once for the aggregation."""

    done: list[float]
    per_image: pd.DataFrame
    shares: pd.DataFrame
    info: dict[float, dict[str, Any]]
    models: list[str]
    methods: list[str]


def _load_rates(out: Path, rates: list[float]) -> _Rates:
    done = [r for r in rates if (out / rate_folder(r) / CONTROL_DIR / "rate.json").exists()]
    if not done:
        raise DataError(f"{out} holds no finished rate of the control; run `robsal control` first")
    per_image = pd.concat([pd.read_csv(out / rate_folder(r) / CONTROL_DIR / "per_image.csv") for r in done])
    shares = pd.concat([pd.read_csv(out / rate_folder(r) / CONTROL_DIR / "shares.csv") for r in done])
    info = {r: read_json(out / rate_folder(r) / CONTROL_DIR / "rate.json") for r in done}
    per_image["image_id"] = per_image["image_id"].astype(str)
    shares["image_id"] = shares["image_id"].astype(str)
    return _Rates(done, per_image, shares, info, list(info[done[0]]["models"]), list(info[done[0]]["methods"]))


def _series(df: pd.DataFrame, col: str, **sel: Any) -> dict[str, float]:
    """image id -> ``col`` of the rows of ``df`` that match every ``column=value`` of ``sel``."""
    m = np.ones(len(df), bool)
    for k_, v in sel.items():
        m &= (df[k_] == v).to_numpy()
    return dict(zip(df.loc[m, "image_id"], df.loc[m, col].astype(float)))


def _reliance_rows(d: _Rates, nb: int, alpha: float, seed: int) -> list[dict[str, Any]]:
    """Issue item 3: flip rate and probability drop per rate, model and group, with bootstrap CIs."""
    done, models, per_image = d.done, d.models, d.per_image
    reliance = []
    for r in done:
        for name in models:
            d = per_image[(per_image["rate"] == r) & (per_image["model"] == name)]
            for grp in (*GROUPS, "all"):
                g = d if grp == "all" else d[d["group"] == grp]
                for metric in ("flip", "prob_drop"):
                    row = sc.mean_ci(g[metric].to_numpy(), n_boot=nb, alpha=alpha, seed=seed,
                                     keys=("reliance", f"{r:g}", name, grp, metric))
                    reliance.append({"rate": r, "model": name, "group": grp, "metric": metric, **row,
                                     "carried": int(g["carried"].sum())})

    return reliance


def _detection_rows(d: _Rates, nb: int, alpha: float, seed: int) -> list[dict[str, Any]]:
    """Issue item 4: artifact share, lift and flip AUROC per rate, model and method."""
    done, models, methods, shares = d.done, d.models, d.methods, d.shares
    detection = []
    for r in done:
        for name in models:
            for method in methods:
                d = shares[(shares["rate"] == r) & (shares["model"] == name) & (shares["method"] == method)]
                keys = (f"{r:g}", name, method)
                share = sc.mean_ci(d["share"].to_numpy(), n_boot=nb, alpha=alpha, seed=seed, keys=("share", *keys))
                lift = sc.mean_ci(d["lift"].to_numpy(), n_boot=nb, alpha=alpha, seed=seed, keys=("lift", *keys))
                ok = d[np.isfinite(d["share"])]
                pos, neg = ok.loc[ok["flip"] == 1, "share"].to_numpy(), ok.loc[ok["flip"] == 0, "share"].to_numpy()
                auc, lo, hi = sc.auroc_ci(pos, neg, n_boot=nb, alpha=alpha, seed=sc.stable_seed(seed, "auc", *keys))
                detection.append({
                    "rate": r, "model": name, "method": method, "n": share["n"],
                    "share": share["mean"], "share_low": share["low"], "share_high": share["high"],
                    "area": float(np.nanmean(d["area"])) if len(d) else float("nan"),
                    "lift": lift["mean"], "lift_low": lift["low"], "lift_high": lift["high"],
                    "n_flip": int(len(pos)), "n_no_flip": int(len(neg)),
                    "flip_auroc": auc, "flip_auroc_low": lo, "flip_auroc_high": hi,
                    "flip_auroc_p": sc.mannwhitney_p(pos, neg),
                })

    return detection


def _detection_verdicts(d: _Rates, detection_df: pd.DataFrame, nb: int, alpha: float,
                        seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per model and method: does the artifact share rise from the lowest to the highest rate
    (and, at the highest, on the images that flip)? Returns (verdicts, model AUROC rows)."""
    done, models, methods, per_image, shares = d.done, d.models, d.methods, d.per_image, d.shares
    gates = {r: d.info[r]["gate"] for r in done}
    lo_r, hi_r = done[0], done[-1]
    verdicts: list[dict[str, Any]] = []
    series = _series
    model_auroc = []
    if len(done) >= 2:
        for name in models:
            comparable = bool(gates[lo_r].get("comparable", False) and gates[hi_r].get("comparable", False))
            reason = "; ".join([*(gates[lo_r].get("reasons") or []), *(gates[hi_r].get("reasons") or [])])
            rel = sc.paired_test(series(per_image, "flip", rate=hi_r, model=name), series(per_image, "flip", rate=lo_r, model=name),
                                 n_boot=nb, alpha=alpha, seed=seed, keys=("reliance_shift", name))
            reliance_shown = bool(np.isfinite(rel["low"]) and rel["low"] > 0)
            for method in methods:
                a = series(shares, "share", rate=hi_r, model=name, method=method)
                b = series(shares, "share", rate=lo_r, model=name, method=method)
                shift = sc.paired_test(a, b, n_boot=nb, alpha=alpha, seed=seed, keys=("share_shift", name, method))
                pa = [v for v in a.values() if np.isfinite(v)]
                pb = [v for v in b.values() if np.isfinite(v)]
                auc, alo, ahi = sc.auroc_ci(pa, pb, n_boot=nb, alpha=alpha, seed=sc.stable_seed(seed, "model_auc", name, method))
                model_auroc.append({"model": name, "method": method, "reliant_rate": hi_r, "reference_rate": lo_r,
                                    "auroc": auc, "low": alo, "high": ahi, "n_reliant": len(pa), "n_reference": len(pb)})
                tests = [{"name": f"artifact share p={hi_r:g} - p={lo_r:g}", "kind": "diff", **shift,
                          "effect": shift["diff"], "sign": +1}]
                drow = detection_df[(detection_df["rate"] == hi_r) & (detection_df["model"] == name)
                                    & (detection_df["method"] == method)].iloc[0]
                if drow["n_flip"] > 0 and drow["n_no_flip"] > 0:
                    tests.append({"name": f"flipping vs other images at p={hi_r:g}", "kind": "auroc",
                                  "auroc": drow["flip_auroc"], "low": drow["flip_auroc_low"], "high": drow["flip_auroc_high"],
                                  "p": drow["flip_auroc_p"], "effect": drow["flip_auroc"] - 0.5, "sign": +1,
                                  "n": int(drow["n_flip"] + drow["n_no_flip"])})
                sc.holm_verdict(tests, alpha=alpha)
                verdict, why = sc.detection_verdict(tests, reliance_shown=reliance_shown, comparable=comparable,
                                                    gate_reason=reason)
                detail = "; ".join(sc.describe_test(t) for t in tests)
                verdicts.append({
                    "kind": "detection", "model": name, "method": method, "verdict": verdict, "reason": why,
                    "model_auroc": auc, "model_auroc_low": alo, "model_auroc_high": ahi,
                    "reliance_shift": rel["diff"], "reliance_shift_low": rel["low"], "reliance_shift_high": rel["high"],
                    "tests": tests,
                    "line": f"{method} on {name}: {verdict}" + (f" ({why})" if why and verdict != sc.DETECTS else "")
                            + f"; model AUROC {auc:.2f} [{alo:.2f}, {ahi:.2f}]; {detail}",
                })

    return verdicts, model_auroc


def _robust_vs_standard(d: _Rates, standard: str, robusts: list[str], nb: int, alpha: float,
                        seed: int) -> list[dict[str, Any]]:
    """Issue item 5: does adversarial training change the reliance, and the shortcut's visibility?"""
    done, methods, per_image, shares = d.done, d.methods, d.per_image, d.shares
    gates = {r: d.info[r]["gate"] for r in done}
    verdicts: list[dict[str, Any]] = []
    series = _series
    for robust in robusts:
        for r in done:
            g = gates[r]
            comparable, reason = bool(g.get("comparable", False)), "; ".join(g.get("reasons") or [])
            tests = []
            for metric in ("flip", "prob_drop"):
                t = sc.paired_test(series(per_image, metric, rate=r, model=robust), series(per_image, metric, rate=r, model=standard),
                                   n_boot=nb, alpha=alpha, seed=seed, keys=("svr", f"{r:g}", metric))
                tests.append({"name": f"{metric} {robust} - {standard}", "kind": "diff", **t, "effect": t["diff"], "sign": -1})
            sc.holm_verdict(tests, alpha=alpha)
            verdicts.append(_paired_verdict("reliance", "the robust model relies less on the shortcut", robust, standard,
                                            r, None, tests, comparable, reason))
            tests = []
            for method in methods:
                t = sc.paired_test(series(shares, "share", rate=r, model=robust, method=method),
                                   series(shares, "share", rate=r, model=standard, method=method),
                                   n_boot=nb, alpha=alpha, seed=seed, keys=("svv", f"{r:g}", method))
                tests.append({"name": f"artifact share ({method})", "method": method, "kind": "diff", **t,
                              "effect": t["diff"], "sign": +1})
            sc.holm_verdict(tests, alpha=alpha)  # Holm across the methods at this rate
            for t in tests:
                verdicts.append(_paired_verdict("visibility", "the shortcut is more visible in the robust model's maps",
                                                robust, standard, r, t["method"], [t], comparable, reason))

    return verdicts


def aggregate(out: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    """Tables and verdicts across the rates of a control folder; writes ``RUN/control/``."""
    out = Path(out)
    cfg = cfg or load_run_config(out)
    nb, alpha, seed = cfg.metrics.n_bootstrap, cfg.metrics.alpha, cfg.seed
    rates = sorted(float(r) for r in cfg.control.rates)
    d = _load_rates(out, rates)
    done, info = d.done, d.info
    standard, robusts = _standard_and_robust(cfg)
    reliance = _reliance_rows(d, nb, alpha, seed)
    reliance_df = pd.DataFrame(reliance)
    detection = _detection_rows(d, nb, alpha, seed)
    detection_df = pd.DataFrame(detection)
    verdicts, model_auroc = _detection_verdicts(d, detection_df, nb, alpha, seed)
    verdicts += _robust_vs_standard(d, standard, robusts, nb, alpha, seed)
    gates = {r: info[r]["gate"] for r in done}
    lines = _plain_lines(cfg, done, reliance_df, verdicts, standard, robusts)
    ctl = out / CONTROL_DIR
    ctl.mkdir(parents=True, exist_ok=True)
    reliance_df.to_csv(ctl / "reliance.csv", index=False)
    detection_df.to_csv(ctl / "detection.csv", index=False)
    pd.DataFrame([{k_: v for k_, v in x.items() if k_ != "tests"} for x in verdicts]).to_csv(ctl / "verdicts.csv", index=False)
    summary = {
        "artifact": cfg.control.artifact, "planted_class": cfg.control.planted_class, "rates": done,
        "rates_asked": rates, "models": d.models, "standard": standard, "robust": robusts, "methods": d.methods,
        "alpha": alpha, "n_bootstrap": nb, "gates": {f"{r:g}": gates[r] for r in done},
        "n_test": {f"{r:g}": info[r]["n_test"] for r in done}, "carried": {f"{r:g}": info[r]["carried"] for r in done},
        "reliance": reliance, "detection": detection, "model_auroc": model_auroc, "verdicts": verdicts, "lines": lines,
    }
    write_json(ctl / "summary.json", json_safe(summary))
    write_text(ctl / "lines.txt", "\n".join(lines) + "\n")
    return json_safe(summary)


def _paired_verdict(kind: str, sentence: str, robust: str, standard: str, rate: float, method: str | None,
                    tests: list[dict[str, Any]], comparable: bool, reason: str) -> dict[str, Any]:
    defined = [t for t in tests if np.isfinite(t.get("p", float("nan")))]
    support = [t for t in defined if t["supports"]]
    contra = [t for t in defined if t["contradicts"]]
    status = verdict_status(len(support), len(contra), len(defined)) if comparable else sc.NOT_COMPARABLE
    detail = "; ".join(sc.describe_test(t) for t in tests)
    where = f"p={rate:g}" + (f", {method}" if method else "")
    line = f"{sentence} ({robust} vs {standard}, {where}): {status}" + (f": {reason}" if not comparable else f": {detail}")
    return {"kind": kind, "model": robust, "standard": standard, "rate": rate, "method": method, "verdict": status,
            "reason": reason if not comparable else "", "tests": tests, "line": line}


def _plain_lines(cfg: Config, done: list[float], reliance: pd.DataFrame, verdicts: list[dict[str, Any]],
                 standard: str, robusts: list[str]) -> list[str]:
    """The plain-language reading: a few sentences a reader can take away."""
    c = cfg.control
    hi = done[-1]
    lines = [f"planted: {c.artifact} with {c.planted_class} at rates {', '.join(f'{r:g}' for r in done)}"]
    for name in [standard, *robusts]:
        def get(rate: float, group: str, metric: str) -> dict:
            d = reliance[(reliance["rate"] == rate) & (reliance["model"] == name) & (reliance["group"] == group)
                         & (reliance["metric"] == metric)]
            return d.iloc[0].to_dict() if len(d) else {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
        a, b = get(hi, "planted", "flip"), get(hi, "other", "flip")
        a0 = get(done[0], "planted", "flip")
        lines.append(
            f"{name} at p={hi:g}: removing the {c.artifact} flips {a['mean']:.0%} [{a['low']:.0%}, {a['high']:.0%}] of "
            f"{c.planted_class} predictions (p={done[0]:g}: {a0['mean']:.0%}); adding it turns {b['mean']:.0%} "
            f"[{b['low']:.0%}, {b['high']:.0%}] of the other classes into {c.planted_class}")
    det = [v for v in verdicts if v["kind"] == "detection"]
    if det:
        for name in [standard, *robusts]:
            yes = [v["method"] for v in det if v["model"] == name and v["verdict"] == sc.DETECTS]
            no = [v["method"] for v in det if v["model"] == name and v["verdict"] == sc.DOES_NOT]
            other = sorted({v["verdict"] for v in det if v["model"] == name} - {sc.DETECTS, sc.DOES_NOT})
            lines.append(f"{name}: detect the shortcut: {', '.join(yes) or 'none'}; do not: {', '.join(no) or 'none'}"
                         + (f"; {', '.join(other)}" if other else ""))
    for v in verdicts:
        if v["kind"] == "reliance" and v["rate"] == hi:
            lines.append(v["line"])
    return lines
