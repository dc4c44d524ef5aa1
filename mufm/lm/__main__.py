"""python -m mufm.lm COMMAND ...

  evaluate  --model_dir=RUN [--split=test] [--tokens_dir=DIR] [--shuffle_mulan] [--out=JSON]

RUN is a stage LM run trained on a token task (experiments/stage_*_corpus_cpu.gin); see
mufm/lm/evaluate.py. Exit status: 0 done, 2 bad arguments or a missing run or tokens.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "evaluate":
        from mufm.lm.evaluate import main as evaluate_main

        return evaluate_main(rest)
    print(f"error: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
