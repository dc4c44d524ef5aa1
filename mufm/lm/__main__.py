"""python -m mufm.lm COMMAND ...

  train     (alias of python -m mufm.train) --gin_file=experiments/stage_coarse_corpus_cpu.gin --gin.MODEL_DIR=\"runs/stage_coarse\" --gin.TOKENS_DIR=\"DIR\"
  evaluate  --model_dir=RUN [--split=test] [--tokens_dir=DIR] [--shuffle_mulan] [--out=JSON]

RUN is a stage LM run trained on a token task (experiments/stage_*_corpus_cpu.gin); see
mufm/lm/evaluate.py. Exit status: 0 done, 2 bad arguments or a missing run or tokens.
"""
from __future__ import annotations

import logging
import sys

from mufm.commands import dispatch


def _commands():
    from mufm.lm.evaluate import main as evaluate

    return {"evaluate": evaluate}


def main(argv=None) -> int:
    return dispatch("mufm.lm", __doc__, _commands, argv, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
