"""python -m mufm.generate --mulan=RUN --semantic=RUN --coarse=RUN --fine=RUN --codec=RUN
    --text "a calm piano piece" [--text ...] --seconds 10 --out out.wav
    [--num_samples 1] [--seed 0] [--overlap 0.5] [--max_seconds 300] [--no_progress]

Generates `num_samples` clips per caption through the cascade (mufm/sample/cascade.py) and
writes them as 24 kHz WAVs: `--out` itself for one clip, else `<out stem>-<i>.wav` in
caption order. Prints one tab-separated index line per file: caption, seconds, path; then
the wall time of each stage on stderr. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

USAGE = __doc__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit 2, in one line
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv):
    p = _Parser(prog="python -m mufm.generate", description=USAGE,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    for role in ("mulan", "semantic", "coarse", "fine", "codec"):
        p.add_argument(f"--{role}", required=True, help=f"the {role} run directory")
    p.add_argument("--text", action="append", required=True, help="a caption (repeatable)")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True, help="the WAV to write (a stem for several)")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=float, default=0.5,
                   help="fraction of a window carried into the next one")
    p.add_argument("--max_seconds", type=float, default=None)
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def out_paths(out: str, n: int) -> list[str]:
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}-{i}{ext or '.wav'}" for i in range(n)]


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    prog = "python -m mufm.generate"
    if args.num_samples < 1:
        print(f"{prog}: error: --num_samples={args.num_samples} must be >= 1", file=sys.stderr)
        return 2
    from mufm.sample.cascade import MAX_SECONDS, Cascade, CascadeError, check_inputs

    try:
        max_seconds = args.max_seconds or MAX_SECONDS
        # The captions first: a typo should not cost loading five models.
        texts = [t for t in check_inputs(args.text, args.seconds, max_seconds)
                 for _ in range(args.num_samples)]
        cascade = Cascade.load(args.mulan, args.semantic, args.coarse, args.fine, args.codec,
                               overlap=args.overlap, max_seconds=max_seconds)
        t0 = time.perf_counter()
        audio = cascade.generate(texts, args.seconds, seed=args.seed,
                                 progress=not args.no_progress)
        wall = time.perf_counter() - t0
    except (CascadeError, ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    import soundfile as sf

    paths = out_paths(args.out, len(texts))
    for text, wave, path in zip(texts, audio, paths):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        sf.write(path, wave, cascade.sample_rate, subtype="FLOAT")
        print(f"{text}\t{args.seconds:g}\t{path}", flush=True)
    stages = " ".join(f"{k} {v:.1f}s" for k, v in cascade.timings.items())
    print(f"wall {wall:.1f}s ({stages}); real-time factor {wall / args.seconds:.2f} for "
          f"{len(texts)} x {args.seconds:g} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
