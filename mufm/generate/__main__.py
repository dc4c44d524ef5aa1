"""python -m mufm.generate [--gin_file=configs/generate/main.gin] [--gin.NAME=value ...]
    (--text "a calm piano piece" [--text ...] --seconds 10
     | --story "soft piano@10;drums join@10;a fade out@5"
     | --prompt_audio in.wav --seconds 20 [--text ...])
    --out out.wav [--num_samples 1] [--seed 0] [--no_progress]
    [--mulan=RUN --semantic=RUN --coarse=RUN --fine=RUN --codec=RUN --semantic_tokenizer=RUN]
    [--overlap 0.5] [--max_seconds 1200]

Generates through the cascade (mufm/sample/cascade.py): from captions, from a story (its
parts in turn, the caption changing at each boundary), or continuing an audio prompt
(conditioned on --text if given, else on the prompt's own sound). The runs come from a
`GenerateConfig` in gin (configs/generate/*.gin) or from the role flags, which win.

Writes `num_samples` clips per caption as 24 kHz WAVs: `--out` itself for one clip, else
`<out stem>-<i>.wav` in caption order, each written as its audio is decoded (a long clip
can be played while it is made). Prints one tab-separated index line per file (caption,
seconds, path), then the wall time of each stage on stderr. Bad input (an empty caption,
seconds <= 0 or over the limit, an unreadable or short prompt, a run of the wrong family,
runs that do not fit together): one line on stderr, exit status 2, before any model runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

USAGE = __doc__
PROG = "python -m mufm.generate"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit 2, in one line
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv):
    from mufm.generate.config import ROLES

    p = _Parser(prog=PROG, description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    for role in (*ROLES, "semantic_tokenizer", "semantic_tokens"):
        p.add_argument(f"--{role}", help=f"the {role} run directory (GenerateConfig.{role})")
    p.add_argument("--text", action="append", help="a caption (repeatable)")
    p.add_argument("--story", help="'caption@seconds;caption@seconds;...'")
    p.add_argument("--prompt_audio", help="an audio file to continue")
    p.add_argument("--seconds", type=float, help="clip length (after the prompt, with one)")
    p.add_argument("--out", required=True, help="the WAV to write (a stem for several)")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=float, help="fraction of a window carried into the next")
    p.add_argument("--max_seconds", type=float)
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def out_paths(out: str, n: int) -> list[str]:
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}-{i}{ext or '.wav'}" for i in range(n)]


def _config(args, files, bindings):
    """The GenerateConfig of the gin files and bindings, with the flags' changes."""
    from mufm import gin_flags
    from mufm.generate.config import GenerateConfig

    if files:
        # Not finalized: loading the runs imports modules that register configurables.
        gin_flags.parse(files, bindings, finalize=False)
    elif bindings:
        raise gin_flags.GinConfigError("--gin. bindings need a --gin_file")
    changes = {k: getattr(args, k) for k in ("mulan", "semantic", "coarse", "fine", "codec",
                                              "semantic_tokenizer", "semantic_tokens",
                                              "overlap", "max_seconds")
               if getattr(args, k) is not None}
    return dataclasses.replace(GenerateConfig(), **changes)


def _check_request(args, config):
    """What to generate, checked without a model: (mode, payload, index captions)."""
    from mufm.audio.io import AudioReadError, info
    from mufm.sample.cascade import CascadeError, check_inputs, check_story, parse_story

    modes = [m for m, on in (("--story", args.story), ("--prompt_audio", args.prompt_audio))
             if on is not None]
    if len(modes) > 1:
        raise CascadeError("give one of --story and --prompt_audio")
    if args.num_samples < 1:
        raise CascadeError(f"--num_samples={args.num_samples} must be >= 1")
    if args.story is not None:
        if args.text or args.seconds is not None:
            raise CascadeError("--story carries its own captions and seconds: drop --text and "
                               "--seconds")
        story = parse_story(args.story)
        texts, ends = check_story(story, config.max_seconds)
        caption = " | ".join(f"{t}@{s:g}" for t, s in story)
        return "story", story, [caption] * args.num_samples, [ends[-1] / 25] * args.num_samples
    if args.seconds is None:
        raise CascadeError("--seconds is required (with --text or --prompt_audio)")
    if args.prompt_audio is not None:
        try:
            prompt_seconds = info(args.prompt_audio).duration_s
        except (AudioReadError, OSError, RuntimeError) as e:
            raise CascadeError(f"--prompt_audio {args.prompt_audio}: unreadable ({e})") from None
        texts = check_inputs(args.text, args.seconds, config.max_seconds) if args.text else None
        what = [f"continuation of {args.prompt_audio}" + (f": {t}" if t else "")
                for t in (texts or [""]) for _ in range(args.num_samples)]
        total = int(prompt_seconds * 25) / 25 + args.seconds
        return "continuation", texts, what, [total] * len(what)
    if not args.text:
        raise CascadeError("give --text (with --seconds), --story or --prompt_audio")
    texts = check_inputs(args.text, args.seconds, config.max_seconds)
    captions = [t for t in texts for _ in range(args.num_samples)]
    return "text", texts, captions, [args.seconds] * len(captions)


def main(argv=None) -> int:
    from mufm import gin_flags

    files, bindings, rest = gin_flags.split_args(sys.argv[1:] if argv is None else argv)
    args = parse(rest)
    from mufm.sample.cascade import CascadeError

    try:
        config = _config(args, files, bindings)
        # The request first: a typo should not cost loading six models.
        mode, payload, captions, seconds = _check_request(args, config)
        cascade = config.load()
        t0 = time.perf_counter()
        if mode == "text":
            request = cascade.text_request(payload, args.seconds, args.num_samples)
        elif mode == "story":
            request = cascade.story_request(payload, args.num_samples)
        else:
            request = cascade.continuation_request(args.prompt_audio, args.seconds,
                                                   texts=payload, num_samples=args.num_samples)
        paths = out_paths(args.out, request.rows)
        written = _write_stream(cascade.stream(request, seed=args.seed,
                                               progress=not args.no_progress),
                                paths, cascade.sample_rate)
        wall = time.perf_counter() - t0
    except (CascadeError, gin_flags.GinConfigError, ValueError, FileNotFoundError) as e:
        one_line = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"{PROG}: error: {one_line}", file=sys.stderr)
        return 2
    for caption, secs, path in zip(captions, seconds, paths):
        print(f"{caption}\t{secs:g}\t{path}", flush=True)
    audio_seconds = written / cascade.sample_rate
    stages = " ".join(f"{k} {v:.1f}s" for k, v in cascade.timings.items())
    print(f"wall {wall:.1f}s ({stages}); {len(paths) * audio_seconds / wall:.3f} s of audio per s for "
          f"{len(paths)} x {audio_seconds:g} s", file=sys.stderr)
    return 0


def _write_stream(chunks, paths, sample_rate: int) -> int:
    """Writes each row's audio to its WAV as the chunks come; returns samples per row.
    Files go to `<path>.partial` and are renamed when complete: a stopped run leaves no
    WAV that looks finished."""
    import soundfile as sf

    files, done = [], 0
    try:
        for path in paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            files.append(sf.SoundFile(path + ".partial", "w", samplerate=sample_rate,
                                      channels=1, subtype="FLOAT", format="WAV"))
        for chunk in chunks:
            for f, row in zip(files, chunk):
                f.write(row)
                f.flush()
            done += chunk.shape[1]
    finally:
        for f in files:
            f.close()
    for path in paths:
        os.replace(path + ".partial", path)
    return done


if __name__ == "__main__":
    sys.exit(main())
