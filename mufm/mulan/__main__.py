"""python -m mufm.mulan COMMAND ...

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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    from mufm.mulan import cli

    command, rest = argv[0], argv[1:]
    if command not in cli.COMMANDS:
        print(f"mufm.mulan: error: unknown command {command!r}; one of {sorted(cli.COMMANDS)}",
              file=sys.stderr)
        return 2
    return cli.COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
