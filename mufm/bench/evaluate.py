"""Cost of the evaluation job (mufm/eval/job.py): seconds of evaluation per generated minute
of audio, split between generation and each metric.

    python -m mufm.bench.evaluate [--gin_file=generate/cpu.gin] --corpus_dir=DIR
        [--tokens_dir=DIR] [--num_prompts 4] [--seconds 10] [--out /tmp/mufm_bench_eval]

Runs one evaluation of the held-out corpus prompts (references give the control, MCC,
FAD and KL rows their ceilings) and divides each part's wall time by the minutes
generated. Last line: `eval_s_per_generated_min=<float> generate_share=<float>`.
"""
from __future__ import annotations

import argparse


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mufm.bench.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="generate/cpu.gin")
    p.add_argument("--corpus_dir", required=True)
    p.add_argument("--tokens_dir")
    p.add_argument("--num_prompts", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", default="/tmp/mufm_bench_eval")
    args = p.parse_args(argv)
    from mufm import gin_flags
    from mufm.eval.job import evaluate
    from mufm.eval.prompts import corpus_prompts
    from mufm.generate.config import GenerateConfig

    gin_flags.parse([args.gin_file], [], finalize=False)
    cascade = GenerateConfig().load()
    prompts = corpus_prompts(args.corpus_dir, "test", args.num_prompts)
    results = evaluate(cascade, prompts, args.seconds, args.out, tokens_dir=args.tokens_dir,
                       corpus_dir=args.corpus_dir, batch=args.num_prompts, log=print)
    minutes = len(prompts) * args.seconds / 60
    timings = results["timings_s"]
    for part, seconds in timings.items():
        print(f"{part:14s} {seconds:8.1f} s  = {seconds / minutes:7.1f} s per generated minute")
    total = sum(timings.values())
    print(f"eval_s_per_generated_min={total / minutes:.1f} "
          f"generate_share={timings['generate'] / total:.3f}")


if __name__ == "__main__":
    main()
