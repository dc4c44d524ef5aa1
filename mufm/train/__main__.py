"""python -m mufm.train --gin_file=... [--gin_file=...] [--gin.NAME=value ...]"""
import logging
import sys

from mufm.gin_flags import GinConfigError, run_main
from mufm.parallel.logical import ShardingRuleError
from mufm.parallel.mesh import MeshError


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    from mufm.train.loop import train

    try:
        run_main(train, argv)
    except (GinConfigError, MeshError, ShardingRuleError) as e:
        print(f"mufm.train: configuration error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
