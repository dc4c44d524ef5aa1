"""python -m mufm.evaluate --gin_file=configs/generate/cpu.gin --out=DIR
    [--prompts=corpus|control|musiccaps:FILE] [--corpus_dir=DIR] [--tokens_dir=DIR]
    [--num_prompts 8] [--seconds 10] [--batch 4] [--memorization_n 125 --memorization_k 3]
    [--watch=ROLE [--poll_s 60] [--until_step N] [--timeout_s S] [--once]]
    [--gin.NAME=value ...]

Generates from a prompt set through the cascade the gin file names (a `GenerateConfig`,
configs/generate/*.gin) and scores it: key and tempo control, MuLan cycle consistency,
FAD on MuLan audio embeddings, semantic-token memorization and entropy, each beside its
floor, ceiling or chance row (mufm/eval/job.py). Writes DIR/metrics.json, DIR/wav/ and
TensorBoard scalars in DIR; prints the summary. With `--watch=semantic` (or coarse, fine,
...): continuous evaluation of that role's run, each new committed checkpoint evaluated
once into DIR/step_<step>/, its scalars at that step in DIR, restart-safe
(mufm/eval/watch.py). `--prompts=corpus` (default) takes the
corpus's held-out captions (needs --corpus_dir); `control` the key x tempo x instrument
sweep; `musiccaps:FILE` a MusicCaps-style CSV. Bad flags: one line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

PROG = "python -m mufm.evaluate"


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", default="corpus")
    p.add_argument("--corpus_dir")
    p.add_argument("--tokens_dir", help="pre-tokenized corpus: memorization against its train split")
    p.add_argument("--split", default="test")
    p.add_argument("--num_prompts", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--memorization_n", type=int, default=125)
    p.add_argument("--memorization_k", type=int, default=3)
    p.add_argument("--watch", help="a GenerateConfig role whose run to evaluate checkpoint by checkpoint")
    p.add_argument("--poll_s", type=float, default=60.0)
    p.add_argument("--until_step", type=int)
    p.add_argument("--timeout_s", type=float)
    p.add_argument("--once", action="store_true", help="with --watch: one pass, no waiting")
    return p.parse_args(argv)


def prompt_set(args):
    from mufm.eval import prompts

    if args.prompts == "corpus":
        if not args.corpus_dir:
            raise ValueError("--prompts=corpus needs --corpus_dir")
        return prompts.corpus_prompts(args.corpus_dir, args.split, args.num_prompts)
    if args.prompts == "control":
        return prompts.control_prompts()[:args.num_prompts]
    if args.prompts.startswith("musiccaps:"):
        return prompts.musiccaps_prompts(args.prompts.split(":", 1)[1], args.num_prompts)
    raise ValueError(f"--prompts={args.prompts!r}: use corpus, control or musiccaps:FILE")


def main(argv=None) -> int:
    from mufm import gin_flags
    from mufm.sample.cascade import CascadeError

    files, bindings, rest = gin_flags.split_args(sys.argv[1:] if argv is None else argv)
    args = parse(rest)
    try:
        if args.num_prompts < 1 or args.batch < 1 or not args.seconds > 0:
            raise ValueError("--num_prompts and --batch must be >= 1 and --seconds > 0")
        prompts = prompt_set(args)
        gin_flags.parse(files, bindings, finalize=False)
        from mufm.eval.job import evaluate
        from mufm.generate.config import GenerateConfig

        log = lambda m: print(m, file=sys.stderr)
        kwargs = dict(tokens_dir=args.tokens_dir, corpus_dir=args.corpus_dir, batch=args.batch,
                      memorization_n=args.memorization_n, memorization_k=args.memorization_k,
                      log=log)
        if args.watch:
            from mufm.eval.watch import watch

            def one(cascade, out, step):
                r = evaluate(cascade, prompts, args.seconds, out, scalars_dir=args.out,
                             step=step, **kwargs)
                return {k: v for k, v in r.items() if k != "rows"}

            steps = watch(GenerateConfig(), args.watch, one, args.out, poll_s=args.poll_s,
                          until_step=args.until_step, timeout_s=args.timeout_s,
                          once=args.once, log=log)
            print(json.dumps({"evaluated_steps": steps}))
            return 0
        cascade = GenerateConfig().load()
        results = evaluate(cascade, prompts, args.seconds, args.out, **kwargs)
    except (CascadeError, gin_flags.GinConfigError, ValueError, FileNotFoundError) as e:
        line = " / ".join(x.strip() for x in str(e).splitlines() if x.strip())
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in results.items() if k != "rows"}
    print(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
