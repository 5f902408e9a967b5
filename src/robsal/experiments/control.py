"""The positive control (``robsal control``): can robsal's measurements see a shortcut a model really uses?

For each rate p of ``control.rates`` the built-in generator plants ``control.artifact`` (ruler by
default) on a share p of the ``control.planted_class`` images (mel by default) and on no image of
another class (p = 0: the negative control, the artifact never appears). The config's models
(standard and robust) are trained on each such dataset, with the usual competence gate. Every
test image is then shown to every model twice, with the artifact and without it
(:mod:`robsal.data.counterfactual`: the same render, the artifact painted or not), which measures
the model's reliance on the shortcut by intervention; and each saliency method explains the
planted class on the with-artifact images, which measures how much of the map lies on the
artifact. :mod:`robsal.metrics.shortcut` turns both into tables and verdicts.

Layout (resumable: a finished rate is skipped when its config is unchanged)::

    RUN/config.yaml                 the control's config
    RUN/p0/ RUN/p0.5/ RUN/p0.9/     one run directory per rate (config.yaml, splits.csv, data/,
                                    models/<name>/, stages.json with the stage "control")
    RUN/p<rate>/control/per_image.csv   rate,model,image_id,label,group,carried,p_with,p_without,
                                        pred_with,pred_without,prob_drop,flip
    RUN/p<rate>/control/shares.csv      rate,model,method,image_id,group,flip,share,area,lift
    RUN/p<rate>/control/examples.npz    a few counterfactual pairs, masks and every model's maps
    RUN/p<rate>/control/rate.json       the rate's gate and timings
    RUN/control/reliance.csv        rate,model,group,metric,n,mean,low,high
    RUN/control/detection.csv       rate,model,method: artifact share, lift, flip AUROC
    RUN/control/verdicts.csv        one line per verdict (detection, standard vs robust)
    RUN/control/summary.json        everything above plus the gates and the plain-language lines
    RUN/control/report.html         the report section as a page of its own

Each rate's folder is a run directory of the usual layout, with ``data.root`` pointing at its own
``data/`` (the planted dataset) and ``control.rates`` holding that one rate.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robsal.config import Config, load_run_config
from robsal.errors import ConfigError, DataError
from robsal.io import read_json, save_npz, write_json, write_text
from robsal.metrics import shortcut as sc
from robsal.metrics.stats import verdict_status
from robsal.rundir import RunLock, fingerprint, init_run, is_done, mark_done
from robsal.utils import json_safe, say

CONTROL_DIR = "control"
STAGE = "control"
GROUPS = ("planted", "other")


def rate_folder(rate: float) -> str:
    """The folder name of a rate: p0, p0.5, p0.9."""
    return f"p{float(rate):g}"


@dataclass
class ControlResult:
    out: Path
    rates: list[float]
    summary: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return list(self.summary.get("lines", []))


# --------------------------------------------------------------------------- configs


def check_config(cfg: Config) -> None:
    """The control needs the built-in generator and a planted class the data has."""
    from robsal.data.synthetic import CLASSES

    c = cfg.control
    if cfg.data.source != "synthetic" or cfg.data.root is not None:
        raise ConfigError("robsal control plants the artifact with the built-in generator: use data.source=synthetic "
                          "without data.root (no --data)")
    if c.planted_class not in cfg.data.classes or c.planted_class not in CLASSES:
        raise ConfigError(f"control.planted_class: {c.planted_class!r} is not one of the classes "
                          f"{', '.join(x for x in cfg.data.classes if x in CLASSES)}")
    if len(c.rates) < 2:
        raise ConfigError(f"control.rates: the control compares rates, give at least two (e.g. 0,0.5,0.9), got {c.rates}")
    if cfg.data.synth.spurious_ruler_mel is not None:
        raise ConfigError("data.synth.spurious_ruler_mel plants its own shortcut; leave it null in a control "
                          "(the control plants control.artifact)")
    if not any(m.eps == 0 for m in cfg.models):
        raise ConfigError("models: the control compares against a standard model; list one with eps 0")
    from robsal.saliency import METHODS

    for m in control_methods(cfg):
        if m not in METHODS:
            raise ConfigError(f"control.methods: unknown method {m!r}; valid: {', '.join(sorted(METHODS))}")


def control_methods(cfg: Config) -> list[str]:
    return list(cfg.control.methods) if cfg.control.methods else list(cfg.saliency.methods)


def rate_config(cfg: Config, rate: float, out: Path) -> Config:
    """The config of one rate's run directory: its own data folder, ``control.rates = [rate]``."""
    rc = copy.deepcopy(cfg)
    rc.control.rates = [float(rate)]
    rc.data.root = str((Path(out) / rate_folder(rate) / "data").resolve())
    return rc


def rate_settings(cfg: Config, rate: float):  # -> SynthSettings
    from dataclasses import replace

    from robsal.data.synthetic import SynthSettings

    base = SynthSettings.from_config(cfg.data.synth)
    return replace(base, planted_artifact=cfg.control.artifact, planted_class=cfg.control.planted_class,
                   planted_rate=float(rate))


# --------------------------------------------------------------------------- the command


def run_control(cfg: Config, out: str | Path, *, device: str | None = None, progress: bool = True) -> ControlResult:
    """Train and measure every rate of ``cfg.control`` into ``out``; aggregate; write the report page."""
    from robsal.utils import resolve_device

    check_config(cfg)
    out = Path(out)
    rates = sorted(float(r) for r in cfg.control.rates)
    dev = resolve_device(device or cfg.device)
    t_all = time.perf_counter()
    with RunLock(out):
        init_run(cfg, out, accept_without_results=False)
        for k, rate in enumerate(rates, 1):
            rcfg = rate_config(cfg, rate, out)
            rdir = out / rate_folder(rate)
            fp = fingerprint(rcfg, "control_rate")
            tag = f"[control {k}/{len(rates)}] p = {rate:g}"
            if is_done(rdir, STAGE, fp) and (rdir / CONTROL_DIR / "rate.json").exists():
                say(f"{tag}: done earlier, skipped")
                continue
            say(f"{tag}: data, training, counterfactuals, maps ...")
            t0 = time.perf_counter()
            with RunLock(rdir):
                init_run(rcfg, rdir)
                _run_rate(rcfg, rate, rdir, dev, progress)
                mark_done(rdir, STAGE, seconds=round(time.perf_counter() - t0, 2), fp=fp)
            say(f"{tag}: done in {time.perf_counter() - t0:.1f} s")
        summary = aggregate(out, cfg)
        from robsal.report.control import write_page

        write_page(out)
    say(f"control finished in {time.perf_counter() - t_all:.1f} s; report: {out / CONTROL_DIR / 'report.html'}")
    return ControlResult(out, rates, summary)


def _run_rate(rcfg: Config, rate: float, rdir: Path, device: torch.device, progress: bool) -> None:
    from robsal.data import prepare
    from robsal.data import synthetic
    from robsal.training import train_models

    settings = rate_settings(rcfg, rate)
    data_dir = rdir / "data"
    have = synthetic.read_settings(data_dir)
    wanted = {"version": synthetic.SYNTH_VERSION, "settings": settings.to_dict()}
    if have is None or {k: have.get(k) for k in wanted} != wanted:
        if data_dir.exists() and any(data_dir.iterdir()) and have is None:
            raise DataError(f"{data_dir} holds files that are not a robsal synthetic dataset; move them away")
        synthetic.generate(data_dir, settings, progress=progress, overwrite=True)
    data = prepare(rcfg, rdir, progress=progress)
    train_models(rcfg, rdir, data, device=device, progress=progress)
    measure_rate(rcfg, rdir, data, device=device)


# --------------------------------------------------------------------------- one rate


def counterfactual_inputs(cfg: Config, data: Any, rows: np.ndarray, source: Any) -> dict[str, np.ndarray]:
    """With/without model inputs (N, 3, S, S) uint8, artifact masks (N, S, S) uint8 and ``carried`` for ``rows``.

    Checks that each render reproduces the run's cached image (the side that is the dataset's image)."""
    from robsal.data.counterfactual import model_input, model_mask

    art, size, crop = cfg.control.artifact, data.image_size, cfg.data.center_crop
    n = len(rows)
    out = {"with": np.zeros((n, 3, size, size), np.uint8), "without": np.zeros((n, 3, size, size), np.uint8),
           "mask": np.zeros((n, size, size), np.uint8), "carried": np.zeros(n, bool)}
    for j, r in enumerate(rows):
        iid = data.image_ids[r]
        pair = source.pair(iid, art)
        out["with"][j] = model_input(pair.with_artifact, size, center_crop=crop)
        out["without"][j] = model_input(pair.without, size, center_crop=crop)
        out["mask"][j] = model_mask(pair.mask, size, center_crop=crop)
        out["carried"][j] = pair.carried
        factual = out["with"][j] if pair.carried else out["without"][j]
        if (pair.carried or art != "bubble") and not np.array_equal(factual, np.asarray(data.images[r])):
            raise DataError(f"the counterfactual render of {iid} does not reproduce the run's image; "
                            "the dataset was not made by this generator version: delete its data/ folder and re-run")
    return out


def probabilities(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities (N, K) float64 of uint8 images (N, 3, S, S)."""
    from robsal.utils import module_mode

    out = []
    with module_mode(model, training=False), torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device).float().div_(255.0)
            out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, 0))


ExplainFn = Any  # (model, images float (B,3,S,S) in [0,1], targets (B,), method, image_ids) -> (B, S, S) maps


def default_explain(cfg: Config, device: torch.device) -> ExplainFn:
    """Maps of robsal's saliency methods with the run's options, reduced over channels as ``explain_run`` does."""
    from robsal.saliency import explain, get_method, reduce_channels
    from robsal.saliency.run import method_options

    def fn(model, x, t, method, ids):  # noqa: ANN001, ANN202
        attr = explain(model, x, t, method, **method_options(cfg, method, ids))
        return reduce_channels(attr, cfg.saliency.reduction, channel_shared=get_method(method).channel_shared)

    return fn


def compute_maps(explain_fn: ExplainFn, model: torch.nn.Module, images: np.ndarray, target: int, method: str,
                 ids: list[str], device: torch.device, batch_size: int) -> np.ndarray:
    """(N, S, S) float32 maps of ``method`` explaining class ``target`` on uint8 ``images``."""
    maps = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device).float().div_(255.0)
        t = torch.full((len(x),), int(target), dtype=torch.long, device=device)
        m = explain_fn(model, x, t, method, ids[i : i + batch_size])
        maps.append(np.asarray(m.detach().cpu() if torch.is_tensor(m) else m, np.float32))
    return np.concatenate(maps) if maps else np.zeros((0,) + images.shape[2:], np.float32)


def explained_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Positions (into the test rows) of up to ``per_class`` images per class, a seeded draw kept in order."""
    rng = np.random.default_rng([int(seed), 14])
    chosen = []
    for k in np.unique(labels):
        pos = np.flatnonzero(labels == k)
        if len(pos) > per_class:
            pos = np.sort(rng.choice(pos, per_class, replace=False))
        chosen.append(pos)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def measure_rate(rcfg: Config, rdir: Path, data: Any, *, device: torch.device,
                 models: dict[str, torch.nn.Module] | None = None, explain_fn: ExplainFn | None = None,
                 source: Any = None) -> dict[str, Any]:
    """Reliance and artifact shares of every model of one rate's run; writes ``RDIR/control/``.

    ``models`` default to the run's trained models, ``explain_fn`` to robsal's methods
    (:func:`default_explain`), ``source`` to the generator of ``RDIR/data`` (tests pass their own).
    """
    from robsal.data.counterfactual import SynthSource
    from robsal.metrics.gate import check as gate_check
    from robsal.models import load

    c = rcfg.control
    rate = float(c.rates[0])
    k = data.classes.index(c.planted_class)
    test = data.indices("test")
    if len(test) == 0:
        raise DataError(f"{rdir} has no test images; check its splits.csv")
    source = source if source is not None else SynthSource.from_folder(Path(rcfg.data.root))
    cf = counterfactual_inputs(rcfg, data, test, source)
    ids = [data.image_ids[r] for r in test]
    labels = data.labels[test]
    group = np.where(labels == k, "planted", "other")
    if models is None:
        models = {spec.name: load(rdir / "models" / spec.name, device) for spec in rcfg.models}
    metrics_of = {}
    for name in models:
        meta = rdir / "models" / name / "model.json"
        metrics_of[name] = read_json(meta).get("metrics") if meta.exists() else None
    gate = gate_check(metrics_of, data.classes, None, min_recall=rcfg.metrics.min_recall)
    explain_fn = explain_fn or default_explain(rcfg, device)
    methods = control_methods(rcfg)
    pos = explained_rows(labels, c.explain_per_class, rcfg.seed)
    bs = rcfg.saliency.batch_size
    rel_rows, share_rows = [], []
    maps_with: dict[str, dict[str, np.ndarray]] = {}
    flips: dict[str, np.ndarray] = {}
    for name, model in models.items():
        rel = sc.reliance_per_image(probabilities(model, cf["with"], device), probabilities(model, cf["without"], device), k)
        flips[name] = rel["flip"]
        for j in range(len(test)):
            rel_rows.append({"rate": rate, "model": name, "image_id": ids[j], "label": data.classes[labels[j]],
                             "group": group[j], "carried": bool(cf["carried"][j]), "p_with": rel["p_with"][j],
                             "p_without": rel["p_without"][j], "pred_with": data.classes[rel["pred_with"][j]],
                             "pred_without": data.classes[rel["pred_without"][j]], "prob_drop": rel["prob_drop"][j],
                             "flip": int(rel["flip"][j])})
        sub_ids = [ids[j] for j in pos]
        for method in methods:
            m = compute_maps(explain_fn, model, cf["with"][pos], k, method, sub_ids, device, bs)
            maps_with.setdefault(name, {})[method] = m
            s = sc.artifact_share(m, cf["mask"][pos])
            for jj, j in enumerate(pos):
                share_rows.append({"rate": rate, "model": name, "method": method, "image_id": ids[j], "group": group[j],
                                   "flip": int(rel["flip"][j]), "share": s["share"][jj], "area": s["area"][jj],
                                   "lift": s["lift"][jj]})
    out = rdir / CONTROL_DIR
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rel_rows).to_csv(out / "per_image.csv", index=False)
    pd.DataFrame(share_rows).to_csv(out / "shares.csv", index=False)
    _save_examples(out / "examples.npz", rcfg, models, methods, explain_fn, cf, pos, ids, labels, k, flips, maps_with,
                   device)
    info = {"rate": rate, "artifact": c.artifact, "planted_class": c.planted_class, "methods": methods,
            "models": list(models), "n_test": len(test), "n_explained": len(pos),
            "carried": int(cf["carried"].sum()), "gate": gate.to_dict()}
    write_json(out / "rate.json", json_safe(info))
    return info


def _save_examples(path: Path, rcfg: Config, models: dict, methods: list[str], explain_fn: ExplainFn, cf: dict,
                   pos: np.ndarray, ids: list[str], labels: np.ndarray, k: int, flips: dict[str, np.ndarray],
                   maps_with: dict, device: torch.device) -> None:
    """A few explained planted-class images (those flipping for most models first): pairs, masks, maps."""
    n = rcfg.control.examples
    cand = [j for j in pos if labels[j] == k] or list(pos)
    score = {j: sum(int(f[j]) for f in flips.values()) for j in cand}
    chosen = sorted(sorted(cand, key=lambda j: -score[j])[:n])
    where = {j: i for i, j in enumerate(pos)}
    arrays: dict[str, np.ndarray] = {
        "image_ids": np.asarray([ids[j] for j in chosen], dtype=str),
        "with": cf["with"][chosen], "without": cf["without"][chosen], "mask": cf["mask"][chosen],
        "carried": cf["carried"][chosen], "models": np.asarray(list(models), dtype=str),
        "methods": np.asarray(methods, dtype=str),
    }
    sub_ids = [ids[j] for j in chosen]
    for name, model in models.items():
        arrays[f"flip__{name}"] = flips[name][chosen]
        for method in methods:
            arrays[f"with__{name}__{method}"] = maps_with[name][method][[where[j] for j in chosen]]
            arrays[f"without__{name}__{method}"] = (
                compute_maps(explain_fn, model, cf["without"][chosen], k, method, sub_ids, device,
                             rcfg.saliency.batch_size) if chosen else np.zeros((0,) + cf["mask"].shape[1:], np.float32))
    save_npz(path, **arrays)


# --------------------------------------------------------------------------- aggregation


def _standard_and_robust(cfg: Config) -> tuple[str, list[str]]:
    standard = next(m.name for m in cfg.models if m.eps == 0)
    return standard, [m.name for m in cfg.models if m.eps > 0]


def aggregate(out: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    """Tables and verdicts across the rates of a control folder; writes ``RUN/control/``."""
    out = Path(out)
    cfg = cfg or load_run_config(out)
    ms = cfg.metrics
    nb, alpha, seed = ms.n_bootstrap, ms.alpha, cfg.seed
    rates = sorted(float(r) for r in cfg.control.rates)
    done = [r for r in rates if (out / rate_folder(r) / CONTROL_DIR / "rate.json").exists()]
    if not done:
        raise DataError(f"{out} holds no finished rate of the control; run `robsal control` first")
    per_image = pd.concat([pd.read_csv(out / rate_folder(r) / CONTROL_DIR / "per_image.csv") for r in done])
    shares = pd.concat([pd.read_csv(out / rate_folder(r) / CONTROL_DIR / "shares.csv") for r in done])
    info = {r: read_json(out / rate_folder(r) / CONTROL_DIR / "rate.json") for r in done}
    per_image["image_id"] = per_image["image_id"].astype(str)
    shares["image_id"] = shares["image_id"].astype(str)
    models = list(info[done[0]]["models"])
    methods = list(info[done[0]]["methods"])
    standard, robusts = _standard_and_robust(cfg)

    # ---- reliance (3)
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
    reliance_df = pd.DataFrame(reliance)

    # ---- detection per rate/model/method (4)
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
    detection_df = pd.DataFrame(detection)

    gates = {r: info[r]["gate"] for r in done}
    lo_r, hi_r = done[0], done[-1]
    verdicts: list[dict[str, Any]] = []

    def series(df: pd.DataFrame, col: str, **sel: Any) -> dict[str, float]:
        m = np.ones(len(df), bool)
        for k_, v in sel.items():
            m &= (df[k_] == v).to_numpy()
        return dict(zip(df.loc[m, "image_id"], df.loc[m, col].astype(float)))

    # ---- detection verdicts: lowest vs highest rate, per model and method
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

    # ---- standard vs robust (5), at every rate
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

    lines = _plain_lines(cfg, done, reliance_df, verdicts, standard, robusts)
    ctl = out / CONTROL_DIR
    ctl.mkdir(parents=True, exist_ok=True)
    reliance_df.to_csv(ctl / "reliance.csv", index=False)
    detection_df.to_csv(ctl / "detection.csv", index=False)
    pd.DataFrame([{k_: v for k_, v in x.items() if k_ != "tests"} for x in verdicts]).to_csv(ctl / "verdicts.csv", index=False)
    summary = {
        "artifact": cfg.control.artifact, "planted_class": cfg.control.planted_class, "rates": done,
        "rates_asked": rates, "models": models, "standard": standard, "robust": robusts, "methods": methods,
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
