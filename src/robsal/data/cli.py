"""``robsal data synth`` (built-in synthetic dermoscopy) and ``robsal data check``."""

from __future__ import annotations

import argparse
import sys
import time


def _synth(args: argparse.Namespace) -> int:
    from robsal.config import SynthConfig, load_config
    from robsal.data.synthetic import SynthSettings, generate

    overrides = [f"data.synth.{k}={v}" for k, v in (
        ("n", args.n), ("size", args.size), ("seed", args.seed), ("difficulty", args.difficulty),
        ("multi_view_rate", args.multi_view_rate), ("hair_rate", args.hair_rate),
        ("ruler_rate", args.ruler_rate), ("vignette_rate", args.vignette_rate),
        ("bubble_rate", args.bubble_rate), ("spurious_ruler_mel", args.spurious_ruler_mel),
    ) if v is not None]
    synth: SynthConfig = load_config(None, overrides).data.synth  # validates every value
    settings = SynthSettings.from_config(synth)
    t0 = time.perf_counter()
    out = generate(args.out, settings, progress=sys.stderr.isatty(), overwrite=args.force)
    dt = time.perf_counter() - t0
    print(f"wrote {settings.n} images of {settings.size} px to {out} in {dt:.1f} s "
          f"({settings.n / max(dt, 1e-9):.0f} images/s)")
    if args.preview:
        from robsal.data.preview import save_preview

        print(f"preview grid: {save_preview(out, args.preview)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from robsal.config import load_config
    from robsal.data.check import check_dataset

    cfg = load_config(args.config, args.overrides) if (args.config or args.overrides) else None
    report = check_dataset(args.data, args.source, cfg)
    print(report.render())
    return 0 if report.ok else 2


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("data", help="generate the built-in synthetic dataset or check a dataset")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    s = dsub.add_parser("synth", help="write synthetic dermoscopy in the HAM10000 layout")
    s.add_argument("--out", required=True, help="output folder (new or empty)")
    s.add_argument("--n", type=int, default=None, help="number of images (default 600)")
    s.add_argument("--size", type=int, default=None, help="image height in px; width = 4/3 x (default 128)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--difficulty", type=float, default=None, help="0 textbook .. 1 overlapping classes (0.5)")
    s.add_argument("--multi-view-rate", type=float, default=None, help="share of lesions with 2-4 images")
    s.add_argument("--hair-rate", type=float, default=None)
    s.add_argument("--ruler-rate", type=float, default=None)
    s.add_argument("--vignette-rate", type=float, default=None)
    s.add_argument("--bubble-rate", type=float, default=None)
    s.add_argument("--spurious-ruler-mel", type=float, default=None,
                   help="rulers only with melanoma, with this probability (a shortcut to expose)")
    s.add_argument("--force", action="store_true", help="replace an existing synthetic dataset in --out")
    s.add_argument("--preview", default=None, metavar="PNG", help="also save a grid of examples with mask outlines")
    s.set_defaults(func=_synth)

    c = dsub.add_parser("check", help="validate a dataset; print class counts, lesions and every problem")
    c.add_argument("--data", required=True,
                   help="dataset folder (HAM10000 layout or root/<class>/*) or MedMNIST .npz file")
    c.add_argument("--source", default="auto", metavar="SOURCE",
                   help="auto (default), ham10000, folder, medmnist or medmnist:<set> (e.g. medmnist:dermamnist)")
    c.add_argument("--config", "-c", default=None,
                   help="also check that this config's classes and balanced split fit the data")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=_check)
