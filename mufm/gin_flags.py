"""T5X-style gin command lines shared by every entry point.

    python -m mufm.train --gin_file=experiments/synthetic_tiny.gin \
        --gin.MODEL_DIR=\"runs/demo\" --gin.TRAIN_STEPS=50

`--gin_file` and `--gin.NAME=value` repeat; later ones win. Files are looked up as given,
then under the repository's configs/ folder (which is also the root for `include`).
Every error in a file or a binding is reported naming the file or binding, before any
compute starts.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import gin

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


_SEARCH_PATH_ADDED = False


class GinConfigError(ValueError):
    """A gin file or binding could not be applied."""


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(gin files, gin bindings, other args) from T5X-style flags."""
    files, bindings, rest = [], [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file":
            files.append(next(it))
        elif arg.startswith("--gin."):
            bindings.append(arg[len("--gin."):])
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return files, bindings, rest


def resolve_gin_file(path: str) -> str:
    for candidate in (path, os.path.join(CONFIGS_DIR, path)):
        if os.path.isfile(candidate):
            # Absolute: gin tries its search prefixes (configs/ first) on a relative path
            # and logs a spurious "Path not found" for each miss.
            return os.path.abspath(candidate)
    raise GinConfigError(f"gin file {path!r} not found (looked in the working directory and {CONFIGS_DIR})")


def parse(files: Sequence[str], bindings: Sequence[str], *, finalize: bool = True) -> None:
    """Applies files then bindings; raises GinConfigError naming the culprit."""
    global _SEARCH_PATH_ADDED
    gin.clear_config()
    if not _SEARCH_PATH_ADDED:  # `include` paths are relative to configs/
        # First in the search list: gin's default '' prefix would try each include as a
        # Python package resource first and log a spurious "Path not found" error.
        gin.config._LOCATION_PREFIXES.insert(0, CONFIGS_DIR)  # gin 0.5.0 has no public insert
        _SEARCH_PATH_ADDED = True
    if not files:
        raise GinConfigError("no --gin_file given")
    for f in files:
        path = resolve_gin_file(f)
        try:
            gin.parse_config_file(path)
        except Exception as e:  # gin raises ValueError/ImportError/SyntaxError variants
            raise GinConfigError(f"gin file {f}: {type(e).__name__}: {e}") from e
    for b in bindings:
        try:
            gin.parse_config(b)
        except Exception as e:
            raise GinConfigError(f"gin binding --gin.{b}: {type(e).__name__}: {e}") from None
    if finalize:
        try:
            gin.finalize()
        except ValueError as e:  # a %gin.REQUIRED value nobody set
            raise GinConfigError(f"{e} Set it with --gin.NAME=value "
                                 f"(e.g. --gin.MODEL_DIR=\\\"runs/demo\\\").") from e


_GIN_DIR = os.path.dirname(os.path.abspath(gin.__file__))


def raised_by_gin(e: BaseException) -> bool:
    """Whether `e` was raised by gin's own code (the innermost frame of its traceback)."""
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_GIN_DIR)


def run_main(entry, argv: Sequence[str] | None = None):
    """Parses gin flags, then calls `entry()` with everything injected by gin."""
    argv = list(sys.argv[1:] if argv is None else argv)
    files, bindings, rest = split_args(argv)
    if rest:
        raise GinConfigError(f"unknown arguments {rest}: use --gin_file=... and --gin.NAME=value")
    parse(files, bindings)
    try:
        return entry()
    except (RuntimeError, ValueError, TypeError) as e:
        # gin reports missing %gin.REQUIRED values and bad parameter names when a
        # configurable is called; only those (raised inside gin itself) are configuration
        # errors. Anything the program raises, even through a configurable, stays itself.
        if raised_by_gin(e):
            raise GinConfigError(str(e)) from None
        raise


def run_cli(entry, argv: Sequence[str] | None, prog: str) -> int:
    """`run_main` for a command line: configuration errors (gin, mesh, sharding rules) print
    one line naming the culprit and return exit status 2, before any compute."""
    from mufm.parallel.logical import ShardingRuleError
    from mufm.parallel.mesh import MeshError

    try:
        run_main(entry, argv)
    except (GinConfigError, MeshError, ShardingRuleError) as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 2
    return 0
