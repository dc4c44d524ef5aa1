"""``python -m mufm.data.corpus build --config=quick|medium|full --out=DIR [--jobs=N] [--seed=S]``.

The soundfont is ``$MUFM_SOUNDFONT`` when set, else Debian's FluidR3_GM; it is part of
the recorded config, so an existing --out resumes only with the same one.
"""
from __future__ import annotations

import argparse
import sys

from mufm.data.corpus.build import build
from mufm.data.corpus.config import CONFIGS, get_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mufm.data.corpus", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="render (or resume rendering) the corpus into --out")
    b.add_argument("--config", default="quick", choices=sorted(CONFIGS))
    b.add_argument("--out", required=True, help="corpus directory (created; resumed if it exists)")
    b.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    b.add_argument("--seed", type=int, default=None, help="selection/variant/caption seed")
    b.add_argument("--variants", type=int, default=None, help="variants per work")
    b.add_argument("--limit", type=int, default=None, help="only the first N works (by id)")
    b.add_argument("--force", action="store_true",
                   help="allow a config change in an existing --out")
    b.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    overrides = {}
    if a.seed is not None:
        overrides["seed"] = a.seed
    if a.variants is not None:
        overrides["variants_per_work"] = a.variants
    report = build(get_config(a.config, **overrides), a.out, jobs=a.jobs, limit=a.limit,
                   progress=not a.no_progress, force=a.force)
    return 0 if report["works_rendered"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
