"""Real-time factor of the text-to-audio cascade on trained runs (configs/generate/*.gin).

    python -m mufm.bench.cascade [--gin_file=generate/cpu.gin] [--seconds 20] [--batch 1]
        [--repeats 2]

Loads the cascade a generate config names, generates `--seconds` of audio for `--batch`
captions once to compile every window shape, then `--repeats` times timed end to end
(MuLan's text tower, the three stages, the codec decoder). Prints each stage's share and,
last, `cascade_rtf=<seconds of audio per second of compute>` (the best repeat; the spread
is printed above it). RTF > 1 is faster than real time.
"""
from __future__ import annotations

import argparse
import time

CAPTION = "G major, 120 bpm, 4/4: a lively folk dance played by a fiddle"


def measure(gin_file: str, seconds: float, batch: int = 1, repeats: int = 2,
            log=print) -> dict:
    """{"rtf": best seconds of audio per second, "rtfs": every repeat's, "timings": the
    best repeat's per stage} for `batch` x `seconds` from the runs `gin_file` names."""
    from mufm.generate import from_gin

    cascade = from_gin(gin_file)
    captions = [CAPTION] * batch
    t0 = time.perf_counter()
    cascade.generate(captions, seconds, seed=0, progress=False)
    log(f"first run (compiles every window shape): {time.perf_counter() - t0:.1f} s")
    rtfs, timings = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        cascade.generate(captions, seconds, seed=r + 1, progress=False)
        wall = time.perf_counter() - t0
        rtfs.append(batch * seconds / wall)
        timings.append(dict(cascade.timings))
        stages = " ".join(f"{k} {v:.2f}s" for k, v in cascade.timings.items())
        log(f"repeat {r}: {wall:.2f} s for {batch} x {seconds:g} s ({stages}); "
            f"rtf {rtfs[-1]:.3f}")
    best = max(range(repeats), key=lambda i: rtfs[i])
    return {"rtf": rtfs[best], "rtfs": rtfs, "timings": timings[best]}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mufm.bench.cascade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="generate/cpu.gin")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    out = measure(args.gin_file, args.seconds, args.batch, args.repeats)
    spread = max(out["rtfs"]) / min(out["rtfs"]) - 1
    print(f"{args.gin_file}: {args.batch} x {args.seconds:g} s; rtf over {args.repeats} repeats "
          f"{min(out['rtfs']):.3f}..{max(out['rtfs']):.3f} (spread {100 * spread:.0f}%)")
    print(f"cascade_rtf={out['rtf']:.4f}")


if __name__ == "__main__":
    main()
