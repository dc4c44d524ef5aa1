"""python -m mufm.train --gin_file=... [--gin_file=...] [--gin.NAME=value ...]"""
import logging
import sys

from mufm.gin_flags import run_cli


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    from mufm.train.loop import train

    return run_cli(train, argv, "mufm.train")


if __name__ == "__main__":
    sys.exit(main())
