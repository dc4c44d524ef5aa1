"""python -m mufm.mulan COMMAND ...

  train      (alias of python -m mufm.train) --gin_file=experiments/mulan_corpus_cpu.gin --gin.MODEL_DIR=\"runs/mulan\" [--gin.X=Y]
  embed      --checkpoint_dir=DIR (--text=CAPTION ... | --audio=FILE ...) --out=emb.npy
  tokens     --checkpoint_dir=DIR (--text=CAPTION ... | --audio=FILE ...)   12 ids per input
  search     --checkpoint_dir=DIR --folder=AUDIO_DIR --query=TEXT [--top=10]
  fit_tokens --checkpoint_dir=DIR [--passes=2] [--codebook_size=1024] [--num_levels=12]
  evaluate   --checkpoint_dir=DIR --corpus_dir=CORPUS --out_dir=DIR [--split=test] [--window=center|clip]

Train with `python -m mufm.train --gin_file=experiments/mulan_corpus_cpu.gin ...`.
`--checkpoint_dir` is a training run's MODEL_DIR or one step directory inside it.
Exit status: 0 done, 2 bad arguments or input (one line on stderr).
"""
from __future__ import annotations

import logging
import sys

from mufm.commands import dispatch


def _commands():
    from mufm.mulan import cli

    return cli.COMMANDS


def main(argv=None) -> int:
    return dispatch("mufm.mulan", __doc__, _commands, argv, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
