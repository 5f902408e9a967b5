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

from robsal.config import Config
from robsal.errors import ConfigError, DataError
from robsal.io import read_json, save_npz, write_json
from robsal.metrics import shortcut as sc
from robsal.experiments.control_results import CONTROL_DIR, aggregate, rate_folder  # noqa: F401 (re-exported)
from robsal.rundir import RunLock, fingerprint, init_run, is_done, mark_done
from robsal.utils import json_safe, say

STAGE = "control"


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
