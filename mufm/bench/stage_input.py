"""Stage input pipeline against the stage step: `python -m mufm.bench.stage_input
[--stage coarse] [--tokens_dir DIR] [--batches 500] [--steps 3]`.

1. Tokens per second the seqio token task delivers for the stage's CPU experiment
   (`experiments/stage_<stage>_corpus_cpu.gin`: records parsed, crops cut, the layout
   encoded in-graph, packed and batched by `StageLMFeatureConverter`, the train split
   shuffled as in training), timed over `batches` batches from the pipeline's construction
   (its shuffle buffer's fill included; 500 batches draw ~4x the buffer).
2. Tokens per second the `base` LM shape (8 x 512, `models/base.gin`) consumes in the
   trainer's own jitted training step on batches of the same shape (one device; XLA:CPU
   uses every core), after one untimed step.

Measured in one process, one after the other (each has the cores to itself). The issue's
target is a ratio >= 10. The last line is `tokens_per_s=<float> step_tokens_per_s=<float>`.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mufm.bench.task_step import experiment_program, print_header, time_train_step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", default="coarse", choices=("semantic", "coarse", "fine"))
    ap.add_argument("--tokens_dir", default=os.path.expanduser("~/.cache/mufm/tokens_medium"))
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    print_header()
    gin_file = f"experiments/stage_{args.stage}_corpus_cpu.gin"
    program = experiment_program(gin_file, [f'TOKENS_DIR="{args.tokens_dir}"'])
    vocab = program.task.model.vocab_size
    task = program.task
    # Timed from the pipeline's construction: the first batches wait for the shuffle
    # buffer (1024 examples) to fill, and timing after it would read the buffer's stock.
    start = time.perf_counter()
    it = task.train_batches(0)
    first = next(it)
    n = first["decoder_target_tokens"].size
    for _ in range(args.batches - 1):
        n += next(it)["decoder_target_tokens"].size
    input_s = time.perf_counter() - start
    real = float(np.mean(first["decoder_loss_weights"] > 0))
    print(f"input: {args.batches} batches of {first['decoder_target_tokens'].shape} in {input_s:.2f} s "
          f"(from the pipeline's construction): {n / input_s:,.0f} tokens/s ({real:.0%} of "
          f"positions carry loss)")
    # The base shape (models/base.gin) with the stage's own id space.
    base = experiment_program(gin_file, [f'TOKENS_DIR="{args.tokens_dir}"',
                                         "LMConfig.d_model=512", "LMConfig.num_layers=8",
                                         "LMConfig.num_heads=8", "LMConfig.d_ff=2048"])
    timing, _ = time_train_step(base, first, args.steps)
    step_tps = first["decoder_target_tokens"].size / timing.seconds
    print(f"base step ({base.task.model.num_layers} x {base.task.model.d_model}, vocab {vocab}): "
          f"{timing.seconds:.2f} s per step (spread {timing.spread:.0%}): {step_tps:,.0f} tokens/s")
    print(f"input / step = {n / input_s / step_tps:.1f}x (target >= 10x)")
    print(f"tokens_per_s={n / input_s:.1f} step_tokens_per_s={step_tps:.1f}")


if __name__ == "__main__":
    main()
