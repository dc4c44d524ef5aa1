"""python -m mufm.semantic COMMAND ...

  train       (alias of python -m mufm.train) --gin_file=experiments/semantic_corpus_cpu.gin --gin.MODEL_DIR=\"runs/semantic\" [--gin.X=Y]
  fit_kmeans  --model_dir=RUN --corpus_dir=CORPUS  [--layer=L] [--num_clusters=1024] [--max_frames=200000] [--epochs=4]
  encode      --model_dir=RUN in.wav [more.wav ...] --out=ids.npy|DIR  [--batch_windows=8]
  evaluate    --model_dir=RUN --corpus_dir=CORPUS --out=DIR  [--codec_dir=CODEC_RUN] [--split=test] [--max_seconds_per_clip=30]

RUN is a semantic training run's MODEL_DIR; fit_kmeans saves RUN/semantic_tokens/, which
encode and evaluate read (`--tokens_dir` elsewhere). Exit status: 0 done, 2 bad arguments,
a missing run or file, or unusable audio.
"""
from __future__ import annotations

import logging
import sys

from mufm.commands import dispatch


def _commands():
    from mufm.semantic import cli

    return cli.COMMANDS


def main(argv=None) -> int:
    return dispatch("mufm.semantic", __doc__, _commands, argv, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
