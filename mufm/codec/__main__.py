"""python -m mufm.codec COMMAND ...

  train     (alias of python -m mufm.train) --gin_file=experiments/codec_corpus_cpu.gin --gin.MODEL_DIR=\"runs/codec\" [--gin.X=Y]
  encode    --checkpoint_dir=DIR in.wav out.npy      [--num_levels=Q] [--chunk_seconds=S]
  decode    --checkpoint_dir=DIR in.npy out.wav      [--chunk_seconds=S]
  roundtrip --checkpoint_dir=DIR in.wav out.wav      [--num_levels=Q] [--chunk_seconds=S]
  evaluate  --checkpoint_dir=DIR --out_dir=DIR       [--clips=N] [--clip_seconds=S]

`--checkpoint_dir` is a training run's MODEL_DIR (its config.gin and checkpoints/), or one
step directory inside it. Exit status: 0 done, 2 bad arguments, configuration or input.
"""
from __future__ import annotations

import logging
import sys

from mufm.commands import dispatch


def _commands():
    from mufm.codec import cli

    return cli.COMMANDS


def main(argv=None) -> int:
    return dispatch("mufm.codec", __doc__, _commands, argv, log_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
