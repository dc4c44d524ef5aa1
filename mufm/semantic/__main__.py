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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from mufm.gin_flags import run_cli
        from mufm.train.loop import train

        return run_cli(train, rest, "mufm.semantic train")
    from mufm.semantic import cli

    if command not in cli.COMMANDS:
        print(f"mufm.semantic: unknown command {command!r}; use one of train, "
              f"{', '.join(cli.COMMANDS)}", file=sys.stderr)
        return 2
    return cli.COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
