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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    from mufm.codec import cli

    if command not in cli.COMMANDS:
        print(f"mufm.codec: unknown command {command!r}; use one of train, "
              f"{', '.join(cli.COMMANDS)}", file=sys.stderr)
        return 2
    return cli.COMMANDS[command](rest)


def _train(argv) -> int:
    """An alias of `python -m mufm.train` (the codec trains through the shared trainer)."""
    from mufm.gin_flags import run_cli
    from mufm.train.loop import train

    return run_cli(train, argv, "mufm.codec train")


if __name__ == "__main__":
    sys.exit(main())
