"""Pre-tokenization speed: `python -m mufm.bench.pretokenize [--codec RUN] [--semantic RUN]
[--semantic_tokens DIR] [--mulan RUN] [--clips 8] [--seconds 30]`.

The pre-tokenization job's per-clip work (`mufm.data.pretokenize.ClipTokenizer`: the
codec's 12 RVQ levels, the semantic tokenizer, MuLan's audio tokens, each jitted at a fixed
shape and batched as the job batches them: codec chunks of 30 s, semantic windows 8 per
call, MuLan windows `batch` per call) on `clips` harmonic clips of `seconds` each, after one
untimed clip (compilation). One process: the job's `--direct_num_workers=2` runs two such
processes, which on 2 cores gains ~1.3x (the medium corpus: 55 s of audio per s).

Prints seconds of audio tokenised per second, in all and per tokenizer, and the share of
the time each takes. The last line is `pretokenize_audio_per_s=<float> codec_share=<f>
semantic_share=<f> mulan_share=<f>`.
"""
from __future__ import annotations

import argparse
import time

from mufm.bench.task_step import harmonic_audio, print_header


def main(argv=None) -> None:
    from mufm.audio import SAMPLE_RATE
    from mufm.data.pretokenize import ClipTokenizer, ModelDirs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", default="runs/codec_medium")
    ap.add_argument("--semantic", default="runs/semantic_cpu")
    ap.add_argument("--semantic_tokens", default="runs/semantic_cpu/tokens_layer2")
    ap.add_argument("--mulan", default="runs/mulan_cpu")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    print_header()
    tok = ClipTokenizer(ModelDirs(codec=args.codec, semantic=args.semantic, mulan=args.mulan,
                                  semantic_tokens=args.semantic_tokens))
    clips = harmonic_audio(args.clips + 1, int(args.seconds * SAMPLE_RATE), SAMPLE_RATE)
    tok.tokenize(clips[0])  # compile every program
    tok.seconds = dict.fromkeys(tok.seconds, 0.0)
    start = time.perf_counter()
    for wave in clips[1:]:
        tok.tokenize(wave)
    wall = time.perf_counter() - start
    audio = args.clips * args.seconds
    total = sum(tok.seconds.values())
    print(f"{args.clips} clips of {args.seconds:g} s: {audio / wall:.1f} s of audio per s in all")
    for name, sec in tok.seconds.items():
        print(f"  {name:<9} {audio / sec:8.1f} s of audio per s  ({sec / total:.0%} of the time)")
    shares = " ".join(f"{k}_share={v / total:.3f}" for k, v in tok.seconds.items())
    print(f"pretokenize_audio_per_s={audio / wall:.2f} {shares}")


if __name__ == "__main__":
    main()
